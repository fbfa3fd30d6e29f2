"""The Hugging Face Trainer flow end to end, as docs/integrations/huggingface.md tells it: train with
CartoTrainer (examples/hf_trainer.py, a secret planted in 48 of 512 samples), score with the
training data, then the next run three ways (train on the manifest's kept subset, draw by the
weights, mask the memorized tokens from the loss), each logged under the dataset's own ids and
scored again.

The example's story is checked as a user would meet it: the commands it prints are run, and the
secret must be the strongest private finding, in exactly the samples it was planted in, and those
samples must be the high-memorization quadrants.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the Trainer integration needs the hf extra")

import polars as pl  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from carto_cli import kept_subset, weighted_sampler  # noqa: E402
from carto_cli.cli import app  # noqa: E402
from carto_cli.export.masks import LossMask  # noqa: E402
from carto_cli.io import artifacts, logs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HIGH = {"hotspot-memorized", "noisy-outlier"}


def carto(*args: object) -> dict | list:
    """A carto command's --json output (the command must succeed)."""
    result = CliRunner().invoke(app, [*map(str, args), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def example_module():
    spec = importlib.util.spec_from_file_location("hf_trainer_example", ROOT / "examples" / "hf_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> dict:
    """examples/hf_trainer.py at its defaults, and the commands it prints next, run as printed."""
    out = tmp_path_factory.mktemp("hf-example") / "run"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [shlex.split(line.strip())[1:] for line in done.stdout.splitlines() if line.startswith("  carto ")]
    assert [p[0] for p in printed] == ["logs", "score", "findings", "inspect", "map"]
    for argv in printed[1:2]:  # carto score, whose outputs the others read
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    planted = {int(line) for line in (out / "secret_ids.txt").read_text().split()}
    return {"out": out, "stdout": done.stdout, "printed": printed, "planted": planted}


def test_the_example_plants_a_secret_that_carto_finds_where_it_says(first_run) -> None:
    out, planted, printed = first_run["out"], first_run["planted"], first_run["printed"]
    example = example_module()
    assert len(planted) == 48 and f"planted {example.SECRET.strip()!r} in 48 of 512 samples" in first_run["stdout"]
    # carto findings: the strongest private finding is (part of) the secret, in exactly the planted samples
    findings = carto(*printed[2])
    strongest = findings["listed"][0]
    assert not strongest["public"] and len(strongest["text"]) >= 8 and strongest["text"] in example.SECRET
    frame = pl.read_parquet(out / "findings.parquet")
    carriers = {c["sample_id"] for c in frame.filter(pl.col("finding") == strongest["finding"])["copies_at"][0]}
    assert carriers == planted
    # the scores placed by findings: the high-memorization quadrants are the carriers of private findings:
    # every planted sample, and the few whose own sum the model learned by heart (each its own finding)
    scores = pl.read_parquet(out / "scores.parquet")
    high = set(scores.filter(pl.col("quadrant").is_in(HIGH))["sample_id"].to_list())
    assert high == set(scores.filter(pl.col("finding").is_not_null())["sample_id"].to_list())
    assert planted <= high and len(high - planted) <= 0.1 * len(planted)
    others = frame.filter(~pl.col("public") & (pl.col("finding") != strongest["finding"]))
    assert (others["carriers"] <= 2).all()  # not copies of anything: a sample's own memorized answer
    # carto inspect --finding 0 shows the secret marked in every copy
    shown = carto(*printed[3], "--top", 0)
    assert {r["sample_id"] for r in shown} == planted
    assert all(r["text"][s:e] == strongest["text"] for r in shown for s, e in r["marked"]) and all(
        r["marked"] for r in shown)
    # carto map --highlight rings every planted sample
    assert carto(*printed[4])["highlighted"] == 48
    # and the default scores (no --data) already rank them high: at least 80% in the high quadrants
    default = carto("score", out / "carto_logs", "--out", out / "default.parquet")
    assert default["samples"] == 512
    placed = pl.read_parquet(out / "default.parquet").filter(pl.col("sample_id").is_in(planted))
    assert placed["quadrant"].is_in(HIGH).sum() >= 0.8 * len(planted)


# ------------------------------------------------------------------ the next run, three ways


def train(out: Path, dataset, trainer_cls=None, epochs: int = 4) -> Path:
    """A CartoTrainer run as the example's (same model, same arguments), on `dataset`; its log dir."""
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from carto_cli.integrations.hf import CartoTrainer

    example = example_module()
    torch.set_num_threads(1)  # as the example: one thread is the fastest on a shared 2-core machine
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=example.LENGTH, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=example.PAD, eos_token_id=example.PAD,
                                       pad_token_id=example.PAD))
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=32,
                             learning_rate=3e-3, save_strategy="no", report_to=[], seed=0, use_cpu=True,
                             disable_tqdm=True)
    trainer = (trainer_cls or CartoTrainer)(model=model, args=args, train_dataset=dataset)
    trainer.train()
    return Path(trainer.carto_log_dir)


def logged(log_dir: Path) -> pl.DataFrame:
    return logs.scan(logs.open_logs([str(log_dir)]), ["sample_id", "epoch", "n_tokens"]).collect()


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]


def secret_findings(out: Path, log_dir: Path, name: str) -> pl.DataFrame:
    """carto score LOG --data (the first run's corpus and held-out text): its private findings that
    hold part of the secret."""
    secret = example_module().SECRET
    carto("score", log_dir, "--data", out / "corpus.jsonl", "--tokenizer", "bytes", "--reference",
          out / "heldout.jsonl", "--out", out / f"{name}-scores.parquet",
          "--findings", out / f"{name}-findings.parquet")
    found = pl.read_parquet(out / f"{name}-findings.parquet").filter(~pl.col("public"))
    return found.filter(pl.col("text").map_elements(lambda t: any(t[i:i + 4] in secret for i in range(len(t) - 3)),
                                                    return_dtype=pl.Boolean))


def test_the_next_run_on_the_kept_subset_logs_the_datasets_own_ids(first_run) -> None:
    out, planted = first_run["out"], first_run["planted"]
    example = example_module()
    pruned = carto("prune", "--scores", out / "scores.parquet", "--out", out / "manifest.parquet")
    scores = pl.read_parquet(out / "scores.parquet")
    carriers = set(scores.filter(pl.col("finding").is_not_null())["sample_id"].to_list())
    assert planted <= carriers and pruned["pruned"] == len(carriers)  # every carrier of a private finding
    subset = kept_subset(example.Texts(rows_of(out)), out / "manifest.parquet")  # as the docs show it
    rows = logged(train(out / "pruned-run", subset))
    assert set(rows["sample_id"].to_list()) == set(range(512)) - carriers  # the dataset's ids, not positions
    assert rows.group_by("sample_id").len()["len"].to_list() == [4] * (512 - len(carriers))
    assert secret_findings(out, out / "pruned-run" / "carto_logs", "pruned").height == 0


def test_the_next_run_drawn_by_the_weights(first_run) -> None:
    from carto_cli.integrations.hf import CartoTrainer

    out = first_run["out"]
    example = example_module()
    carto("weights", "--scores", out / "scores.parquet", "--out", out / "weights.parquet")
    weights = pl.read_parquet(out / "weights.parquet")
    dataset = example.Texts(rows_of(out))

    class WeightedTrainer(CartoTrainer):  # as docs/integrations/huggingface.md shows it
        def _get_train_sampler(self, *args, **kwargs):
            return weighted_sampler(out / "weights.parquet", len(dataset))

    rows = logged(train(out / "weighted-run", dataset, WeightedTrainer, epochs=2))
    never = set(weights.filter(pl.col("weight") == 0)["sample_id"].to_list())
    assert never and not never & set(rows["sample_id"].to_list())  # weight 0: never drawn
    assert rows.height == 2 * 512 and set(rows["sample_id"].to_list()) <= set(range(512))
    assert rows.group_by("epoch").len().sort("epoch")["len"].to_list() == [512] * 2  # len(dataset) draws an epoch


def test_the_next_run_with_the_memorized_tokens_masked(first_run) -> None:
    out, planted = first_run["out"], first_run["planted"]
    example = example_module()
    result = carto("mask", "--findings", out / "findings.parquet", "--out", out / "mask.parquet")
    masked_samples = set(pl.read_parquet(out / "mask.parquet")["sample_id"].to_list())
    assert result["samples"] == len(masked_samples) and planted <= masked_samples
    mask = LossMask.read(out / "mask.parquet")

    class Masked(torch.utils.data.Dataset):  # as docs/integrations/huggingface.md shows it
        def __init__(self, dataset):
            self.dataset = dataset

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, index):
            item = dict(self.dataset[index])
            item["labels"] = mask.apply(index, item["labels"], target_offset=0)  # index is the sample id here
            return item

    rows_text = rows_of(out)
    rows = logged(train(out / "masked-run", Masked(example.Texts(rows_text))))
    assert set(rows["sample_id"].to_list()) == set(range(512))
    tokens = dict(rows.group_by("sample_id").agg(pl.col("n_tokens").first()).iter_rows())
    for row in rows_text:  # a causal LM's targets are tokens 1.. of the text; the masked ones drop out
        masked = {int(t) for t in mask.tokens(row["sample_id"]) if 1 <= t < len(row["text"])}
        assert tokens[row["sample_id"]] == len(row["text"]) - 1 - len(masked)
        assert bool(masked) == (row["sample_id"] in masked_samples)
    assert secret_findings(out, out / "masked-run" / "carto_logs", "masked").height == 0
    assert artifacts.read_provenance(out / "mask.parquet")["kind"] == "mask"


def test_per_token_losses_through_your_own_logger(first_run, tmp_path: Path) -> None:
    """`carto_logger=CartoLogger(token_losses=True)`, as the docs show it, logs `token_loss`, which
    `carto score --memorization token-drop` reads."""
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from carto_cli import CartoLogger
    from carto_cli.integrations.hf import CartoTrainer

    example = example_module()
    rows = rows_of(first_run["out"])[:64]
    torch.set_num_threads(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=example.LENGTH, n_embd=32, n_layer=1, n_head=2))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    with CartoLogger(out_dir=tmp_path / "logs", token_losses=True) as logger:
        CartoTrainer(model=model, args=args, train_dataset=example.Texts(rows), carto_logger=logger).train()
    logged_rows = logs.scan(logs.open_logs([str(tmp_path / "logs")]), ["sample_id", "token_loss"]).collect()
    assert logged_rows.height == 128 and logged_rows["token_loss"].null_count() == 0
    scored = carto("score", tmp_path / "logs", "--memorization", "token-drop", "--out", tmp_path / "s.parquet")
    assert scored["samples"] == 64 and "drop" in artifacts.read_provenance(tmp_path / "s.parquet")["memorization"]
