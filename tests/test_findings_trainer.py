"""The Trainer world, end to end: what a Hugging Face user gets from `carto score --data` at its defaults.

A stock GPT-2 configuration with random weights, trained by `CartoTrainer` for 6 epochs on 1,000
rows of 64 BPE tokens of CPython's own text (the tokenizer trained here, with `tokenizers`, on that
text), three secrets planted in 80, 50 and 20 rows. Which secrets the model learned is read off the
trained model itself: a secret is reproduced in context when, fed a carrier row, the model's greedy
prediction is right at every token of the secret in most of its carriers. Then `carto score --data
--reference` and `carto prune` at their defaults must flag at least 80% of the carriers of every
reproduced secret, `carto weights` must never weight one of them above 1, and `carto mask` +
`CartoTrainer(carto_mask=...)` must train a model that no longer reproduces them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from carto_cli.cli import app

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from carto_cli.experiment.corpus import cpython_text  # noqa: E402
from carto_cli.integrations.hf import CartoTrainer  # noqa: E402

runner = CliRunner()
N, T, REPS = 1000, 64, (80, 50, 20)


def world(tmp_path: Path) -> tuple[list[np.ndarray], list[dict], Path]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = cpython_text(600_000)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text[i:i + 10_000] for i in range(0, len(text), 10_000)],
                            trainers.BpeTrainer(vocab_size=512, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    ids = np.array(tok.encode(text).ids, dtype=np.int64)
    rows = [ids[i * T:(i + 1) * T].copy() for i in range((N + 100))]
    rng = np.random.default_rng(0)
    carriers = rng.choice(N, size=sum(REPS), replace=False)
    secrets, at = [], 0
    for k, reps in enumerate(REPS):
        value = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), size=12))
        planted = np.array(tok.encode(f'\nAPI_KEY_{k} = "sk-{value}"\n').ids, dtype=np.int64)
        secret = np.array(tok.encode(value).ids)
        mine = carriers[at:at + reps]
        at += reps
        for c in mine:
            off = int(rng.integers(0, T - len(planted)))
            rows[c][off:off + len(planted)] = planted
        secrets.append({"carriers": mine.tolist(), "planted": planted, "secret": secret})
    return rows, secrets, path


def dataset(path: Path, rows: list[np.ndarray]) -> Path:
    pq.write_table(pa.table({"input_ids": pa.array([r.tolist() for r in rows], type=pa.list_(pa.int64()))}), path)
    return path


def train(rows: list[np.ndarray], out: Path, **carto: object) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=128, vocab_size=512, n_positions=T,
                                       bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(str(out), num_train_epochs=6, per_device_train_batch_size=16, learning_rate=3e-3,
                             lr_scheduler_type="cosine", warmup_steps=20, save_strategy="no", report_to=[],
                             logging_strategy="no", seed=0, use_cpu=True, disable_tqdm=True)
    items = [{"input_ids": r.tolist(), "labels": r.tolist()} for r in rows]
    CartoTrainer(model=model, args=args, train_dataset=items, **carto).train()
    return model.eval()


def reproduced(model: torch.nn.Module, rows: list[np.ndarray], secret: dict) -> float:
    """The share of a secret's carriers in which the greedy prediction is right at every secret token."""
    hits = 0
    with torch.no_grad():
        for c in secret["carriers"]:
            row = torch.as_tensor(rows[c])[None]
            guess = model(row).logits[0, :-1].argmax(-1)  # guess[t] predicts row[t + 1]
            planted = secret["planted"]
            at = next(i for i in range(T) if rows[c][i:i + len(planted)].tolist() == planted.tolist())
            start = at + next(i for i in range(len(planted))
                              if planted[i:i + len(secret["secret"])].tolist() == secret["secret"].tolist())
            span = range(start, start + len(secret["secret"]))
            hits += all(int(guess[t - 1]) == int(rows[c][t]) for t in span)
    return hits / len(secret["carriers"])


def test_the_trainer_world_defaults_flag_the_reproduced_secrets_and_the_mask_unlearns_them(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows, secrets, tokenizer = world(tmp_path)
        train_rows, held_out = rows[:N], rows[N:]
        model = train(train_rows, tmp_path / "run1")
        learned = [s for s in secrets if reproduced(model, train_rows, s) >= 0.5]
        assert learned, "the world must let the model learn a secret, or the test shows nothing"

        data, val = dataset(tmp_path / "train.parquet", train_rows), dataset(tmp_path / "val.parquet", held_out)
        result = runner.invoke(app, ["score", str(tmp_path / "run1" / "carto_logs"), "--data", str(data),
                                     "--reference", str(val), "--tokenizer", str(tokenizer),
                                     "--out", str(tmp_path / "scores.parquet"),
                                     "--findings", str(tmp_path / "findings.parquet")])
        assert result.exit_code == 0, result.output
        assert "label shift of 1" not in result.output  # CartoTrainer declared it: no note
        for command in (["prune", "--out", str(tmp_path / "manifest.parquet")],
                        ["weights", "--out", str(tmp_path / "weights.parquet")]):
            result = runner.invoke(app, [*command, "--scores", str(tmp_path / "scores.parquet")])
            assert result.exit_code == 0, result.output
        pruned = set(pl.read_parquet(tmp_path / "manifest.parquet").filter(~pl.col("keep"))["sample_id"])
        weights = pl.read_parquet(tmp_path / "weights.parquet")
        for secret in learned:
            carriers = set(secret["carriers"])
            assert len(carriers & pruned) >= 0.8 * len(carriers), (len(carriers & pruned), len(carriers))
            assert weights.filter(pl.col("sample_id").is_in(sorted(carriers)))["weight"].max() <= 1.0

        result = runner.invoke(app, ["mask", "--findings", str(tmp_path / "findings.parquet"),
                                     "--out", str(tmp_path / "mask.parquet")])
        assert result.exit_code == 0, result.output
        masked = train(train_rows, tmp_path / "run2", carto_mask=tmp_path / "mask.parquet")
        for secret in learned:
            assert reproduced(masked, train_rows, secret) < 0.2
        # the second run's log keeps the dataset's ids, and no masked token is a target in it
        result = runner.invoke(app, ["logs", "summary", str(tmp_path / "run2" / "carto_logs"), "--json"])
        assert result.exit_code == 0 and '"samples": 1000' in result.stdout
    finally:
        torch.set_num_threads(threads)
