"""CartoTrainer and CartoTrainerMixin (carto_cli.integrations.hf) against the real transformers Trainer.

A 1-layer GPT-2 with random weights (a few thousand parameters) trains on in-memory datasets made
here, on CPU, for a handful of steps. What is checked:
- one row per presentation (samples x epochs), ids the dataset indices or its `sample_id` column,
  steps the optimizer step being taken, epochs the Trainer's, with and without gradient accumulation;
- the logged values are the forward's: step 0's per-sample losses equal the initial model's;
- the Trainer's numerics are unchanged (final parameters and logged losses equal to a plain
  Trainer's bit for bit, fp32 and bf16), with remove_unused_columns=True (the default);
- the log is flushed before each checkpoint is written, and a run that stops after a checkpoint
  and resumes from it with a new trainer counts every presentation once (the replay rule);
- a kept_subset (nested too) logs the dataset's own ids, not positions in the subset;
- eval forwards are not logged; log directory, run id and logger ownership; bad input (a reserved
  column too) is one line;
- several processes: the repeats Accelerate pads an epoch with are masked, not logged. The masks on
  Accelerate's real loaders for both ranks in one process; then one real 2-process torchrun run
  (gloo, CPU; this file is its script: `--ddp-worker OUT`) of a run stopped after a checkpoint, its
  resume and an iterable dataset, its log compared with what each rank loaded and scored;
- TRL's SFTTrainer with the mixin (its fused LM head: no logits), if trl is installed;
- examples/hf_trainer.py runs and its log scores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

transformers = pytest.importorskip("transformers", reason="the Trainer integration needs the hf extra")

import polars as pl  # noqa: E402
import torch  # noqa: E402
from accelerate.data_loader import prepare_data_loader, skip_first_batches  # noqa: E402
from accelerate.state import GradientState  # noqa: E402
from test_cli import run  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorWithFlattening,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_pt_utils import BatchRebalanceSampler  # noqa: E402

from carto_cli import CartoLogger  # noqa: E402
from carto_cli.errors import CartoError, OptionError  # noqa: E402
from carto_cli.export.sampling import kept_subset  # noqa: E402
from carto_cli.integrations.hf import (  # noqa: E402
    ID_KEY,
    KEEP_KEY,
    CartoTrainer,
    CartoTrainerMixin,
    IdCollator,
    PaddingMasks,
    dispatched_keep,
    indexed,
    padding_rule,
)
from carto_cli.io import artifacts, logs  # noqa: E402
from carto_cli.log import schema  # noqa: E402
from carto_cli.log.shim import default_run_id  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
V, T = 64, 8  # vocabulary, sequence length


def tiny_gpt(seed: int = 0, dropout: float = 0.1) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, n_positions=T, bos_token_id=0,
                                      eos_token_id=0, pad_token_id=0, resid_pdrop=dropout, embd_pdrop=dropout,
                                      attn_pdrop=dropout))


class Corpus(torch.utils.data.Dataset):
    """n random sequences; item i: input_ids, attention_mask, labels (-100 on the first two
    positions) and `text`, a column the model does not take (remove_unused_columns strips it)."""

    def __init__(self, n: int = 12, sample_ids: list | None = None, seed: int = 0) -> None:
        self.x = torch.randint(1, V, (n, T), generator=torch.Generator().manual_seed(seed))
        self.sample_ids = sample_ids

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        labels = self.x[i].clone()
        labels[:2] = -100
        item = {"input_ids": self.x[i], "attention_mask": torch.ones(T, dtype=torch.long), "labels": labels,
                "text": f"sample {i}"}
        if self.sample_ids is not None:
            item[schema.SAMPLE_ID] = self.sample_ids[i]
        return item


def training_args(out: Path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(out), per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-2,
                    save_strategy="no", logging_steps=1, report_to=[], seed=0, use_cpu=True, disable_tqdm=True)
    return TrainingArguments(**{**settings, **overrides})


def train(tmp_path: Path, dataset=None, trainer_class=CartoTrainer, model=None, data_collator=None,
          **overrides) -> CartoTrainer:
    trainer = trainer_class(model=model or tiny_gpt(), args=training_args(tmp_path / "out", **overrides),
                            train_dataset=dataset if dataset is not None else Corpus(), data_collator=data_collator)
    trainer.train()
    return trainer


def raw_rows(log_dir: Path) -> pl.DataFrame:
    """Every row of every part, replays included."""
    return pl.read_parquet(sorted(log_dir.rglob("*.parquet"))).sort("step", "sample_id")


def per_sample_loss(model: GPT2LMHeadModel, batch: dict) -> torch.Tensor:
    """Mean next-token loss of each sample, computed here independently of carto."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), targets.reshape(-1),
                                              ignore_index=-100, reduction="none").view(targets.shape)
    return token.sum(1) / (targets != -100).sum(1)


def stack(dataset, ids) -> dict:
    items = [dataset[i] for i in ids]
    return {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "attention_mask", "labels")}


# ------------------------------------------------------------------ what is logged


def test_every_presentation_is_logged_with_its_index_step_and_epoch(tmp_path: Path) -> None:
    trainer = train(tmp_path)  # 12 samples, batches of 4, 2 epochs: 6 steps of 4
    assert trainer.carto_log_dir == tmp_path / "out" / "carto_logs"
    rows = raw_rows(trainer.carto_log_dir)
    assert rows.height == 24
    assert rows["step"].unique().sort().to_list() == list(range(6))
    assert rows.group_by("step").len()["len"].to_list() == [4] * 6
    assert (rows["epoch"] == rows["step"] // 3).all()
    for epoch in (0, 1):
        assert sorted(rows.filter(pl.col("epoch") == epoch)["sample_id"].to_list()) == list(range(12))
    assert rows.filter(pl.col("epoch") == 0)["sample_id"].to_list() != list(range(12))  # shuffled
    with pytest.raises(CartoError, match="record called after close"):  # the trainer's own logger: closed
        trainer.carto_logger.record([0], epoch=0, step=0, loss=torch.ones(1), correct=torch.ones(1, dtype=torch.bool))


def test_the_logged_values_are_those_of_the_forward_of_the_logged_samples(tmp_path: Path) -> None:
    """At step 0 the model is the initial one: the logged losses of the first batch's ids equal the
    losses computed here on those dataset items (ids, label shift and -100 positions all right).
    Without dropout: carto logs the training forward, dropout included."""
    data = Corpus()
    rows = raw_rows(train(tmp_path, data, model=tiny_gpt(dropout=0.0)).carto_log_dir).filter(pl.col("step") == 0)
    ids = rows["sample_id"].to_list()
    expected = per_sample_loss(tiny_gpt(dropout=0.0).eval(), stack(data, ids))
    assert torch.allclose(torch.tensor(rows["loss"].to_list()), expected, atol=1e-5)
    assert rows["n_tokens"].to_list() == [T - 2] * 4  # the first two labels are -100, the last is shifted away


def test_a_sample_id_column_gives_the_ids(tmp_path: Path) -> None:
    ids = [1000 + 7 * i for i in range(12)]
    rows = raw_rows(train(tmp_path, Corpus(sample_ids=ids)).carto_log_dir)
    assert sorted(rows.filter(pl.col("epoch") == 0)["sample_id"].to_list()) == ids


def test_a_datasets_dataset_keeps_its_sample_id_column_through_remove_unused_columns(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the datasets library is optional")
    data = Corpus()
    table = {k: [data[i][k].tolist() for i in range(12)] for k in ("input_ids", "attention_mask", "labels")}
    ids = [50 + i for i in range(12)]
    dataset = datasets.Dataset.from_dict({**table, "text": [f"s{i}" for i in range(12)], "sample_id": ids})
    dataset.set_format("torch")
    rows = raw_rows(train(tmp_path, dataset).carto_log_dir)
    assert rows.height == 24
    assert sorted(rows.filter(pl.col("epoch") == 1)["sample_id"].to_list()) == ids


@pytest.mark.parametrize(("n", "per_step"), [(12, [6, 6]), (10, [6, 4])])
def test_gradient_accumulation_gives_every_micro_batch_the_step_being_taken(tmp_path: Path, n: int,
                                                                           per_step: list[int]) -> None:
    """Batches of 2, 3 accumulated: 12 samples are 2 steps of 6 an epoch; 10 samples are 5 batches,
    a step of 3 and one of the last 2."""
    rows = raw_rows(train(tmp_path, Corpus(n), per_device_train_batch_size=2,
                          gradient_accumulation_steps=3).carto_log_dir)
    assert rows.height == 2 * n
    counts = rows.group_by("step").len().sort("step")
    assert counts["step"].to_list() == [0, 1, 2, 3]
    assert counts["len"].to_list() == per_step * 2
    assert (rows["epoch"] == rows["step"] // 2).all()
    for epoch in (0, 1):
        assert sorted(rows.filter(pl.col("epoch") == epoch)["sample_id"].to_list()) == list(range(n))


def write_manifest(path: Path, ids: list[int], pruned: set[int]) -> Path:
    df = pl.DataFrame({"sample_id": ids, "keep": [i not in pruned for i in ids],
                       "quadrant": ["stable-easy"] * len(ids)})
    artifacts.write(df, path, artifacts.provenance("manifest", inputs=[], parameters={}))
    return path


def test_training_on_a_kept_subset_logs_the_datasets_own_ids(tmp_path: Path) -> None:
    """A manifest prunes 4 of 12 samples; the next run trains on kept_subset. The 8 kept samples are
    logged under their own ids (they were logged as their positions 0..7 in the subset: 1, 4 and 5
    came back as other samples, 9, 10 and 11 vanished), and the logged values are theirs."""
    data, pruned = Corpus(), {1, 4, 5, 9}
    subset = kept_subset(data, write_manifest(tmp_path / "manifest.parquet", list(range(12)), pruned))
    rows = raw_rows(train(tmp_path, subset, model=tiny_gpt(dropout=0.0)).carto_log_dir)
    kept = [i for i in range(12) if i not in pruned]
    for epoch in (0, 1):  # 8 samples, batches of 4: 2 steps an epoch
        assert sorted(rows.filter(pl.col("epoch") == epoch)["sample_id"].to_list()) == kept
    first = rows.filter(pl.col("step") == 0)
    expected = per_sample_loss(tiny_gpt(dropout=0.0).eval(), stack(data, first["sample_id"].to_list()))
    assert torch.allclose(torch.tensor(first["loss"].to_list()), expected, atol=1e-5)


def test_a_subset_of_a_subset_keeps_the_ids_kept_subset_was_given(tmp_path: Path) -> None:
    """The first run logged ids 1000 + 7i (IndexedDataset(sample_ids=...) or a corpus row number); the
    manifest names those; a Subset of the kept subset still logs them."""
    ids = [1000 + 7 * i for i in range(12)]
    manifest = write_manifest(tmp_path / "manifest.parquet", ids, {ids[0], ids[3]})
    subset = kept_subset(Corpus(), manifest, sample_ids=ids)  # positions 1, 2, 4, ..., 11
    nested = torch.utils.data.Subset(subset, [0, 2, 4, 6])  # positions 1, 4, 6, 8
    rows = raw_rows(train(tmp_path, nested).carto_log_dir)
    assert sorted(rows.filter(pl.col("epoch") == 0)["sample_id"].to_list()) == [ids[1], ids[4], ids[6], ids[8]]
    column = [5 * i for i in range(12)]
    manifest = write_manifest(tmp_path / "by_column.parquet", column, {0, 5})
    with pytest.raises(OptionError, match="items have a `sample_id` column.*; pass sample_ids="):
        kept_subset(Corpus(sample_ids=column), manifest)  # matched to the indices, it would prune 0 and 5
    with_column = kept_subset(Corpus(sample_ids=column), manifest, sample_ids=column)
    rows = raw_rows(train(tmp_path / "column", with_column).carto_log_dir)
    assert sorted(rows.filter(pl.col("epoch") == 1)["sample_id"].to_list()) == [5 * i for i in range(2, 12)]


def test_evaluation_is_not_logged(tmp_path: Path) -> None:
    trainer = CartoTrainer(model=tiny_gpt(), args=training_args(tmp_path, eval_strategy="steps", eval_steps=1),
                           train_dataset=Corpus(), eval_dataset=Corpus(8, seed=1))
    trainer.train()
    assert any("eval_loss" in entry for entry in trainer.state.log_history)
    assert raw_rows(trainer.carto_log_dir).height == 24


def test_sequence_classification_is_logged_as_one_token_per_sample(tmp_path: Path) -> None:
    class Labelled(Corpus):
        def __getitem__(self, i: int) -> dict:
            item = super().__getitem__(i)
            return {**item, "labels": torch.tensor(i % 3)}

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, n_positions=T,
                                                     num_labels=3, pad_token_id=0))
    trainer = CartoTrainer(model=model, args=training_args(tmp_path), train_dataset=Labelled())
    trainer.train()
    rows = raw_rows(trainer.carto_log_dir)
    assert rows.height == 24 and (rows["n_tokens"] == 1).all()
    assert set(rows["token_acc"].unique().to_list()) <= {0.0, 1.0}


# ------------------------------------------------------------------ the Trainer is unchanged


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_the_trainers_numerics_are_unchanged(tmp_path: Path, bf16: bool) -> None:
    """Same seed, same data: a plain Trainer and a CartoTrainer end with equal parameters and log
    equal losses, exactly: carto reads the forward's outputs under no_grad, the sampler is built on
    the same dataset, the collator sees the same features, and nothing draws random numbers."""
    settings = dict(gradient_accumulation_steps=2, per_device_train_batch_size=3, bf16=bf16)
    plain = Trainer(model=tiny_gpt(), args=training_args(tmp_path / "plain", **settings), train_dataset=Corpus())
    plain.train()
    carto = train(tmp_path, **settings)
    for (name, a), (_, b) in zip(plain.model.named_parameters(), carto.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (plain, carto)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    rows = raw_rows(carto.carto_log_dir)
    assert rows.height == 24 and rows["loss"].is_finite().all()


# ------------------------------------------------------------------ checkpoints and resumes


def steps_on_disk(log_dir: Path) -> set[int]:
    return {s for p in log_dir.glob("*.parquet") for s in pq.read_table(p, columns=["step"])["step"].to_pylist()}


def test_the_log_is_flushed_before_each_checkpoint_is_written(tmp_path: Path) -> None:
    seen = {}

    class Watching(CartoTrainer):
        def save_model(self, output_dir=None, _internal_call=False):  # the first write of a checkpoint
            if _internal_call:
                seen[self.state.global_step] = steps_on_disk(self.carto_log_dir)
            super().save_model(output_dir, _internal_call)

    trainer = train(tmp_path, trainer_class=Watching, save_strategy="steps", save_steps=2)
    assert sorted(seen) == [2, 4, 6]
    for step, on_disk in seen.items():
        assert on_disk == set(range(step)), step  # checkpoint-S holds steps 0..S-1: all of them on disk
    assert (tmp_path / "out" / "checkpoint-4").is_dir()
    assert raw_rows(trainer.carto_log_dir).height == 24


class StopAt(TrainerCallback):
    """Ends training normally after `step` optimizer steps: a crash that happens to exit cleanly."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_a_resumed_run_counts_every_presentation_once(tmp_path: Path) -> None:
    """Attempt 1 saves checkpoint-2 and checkpoint-4 and stops after step 5 (steps 0..4 logged);
    attempt 2, a new CartoTrainer, resumes from checkpoint-4 and logs steps 4 and 5. Step 4's rows of
    attempt 1 are replays: the log counts 24 presentations, every sample twice."""
    args = training_args(tmp_path / "out", save_strategy="steps", save_steps=2)
    first = CartoTrainer(model=tiny_gpt(), args=args, train_dataset=Corpus(), callbacks=[StopAt(5)])
    first.train()
    second = CartoTrainer(model=tiny_gpt(seed=1), args=args, train_dataset=Corpus())
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert first.carto_logger.attempt != second.carto_logger.attempt
    assert first.carto_logger.run_id == second.carto_logger.run_id == default_run_id(first.carto_log_dir)

    raw = raw_rows(first.carto_log_dir)
    assert raw.height == 5 * 4 + 2 * 4
    assert (raw["epoch"] == raw["step"] // 3).all()  # the resumed attempt counts epochs from the checkpoint's
    replayed = raw.filter(pl.col("step") == 4)
    assert replayed.height == 8
    # The resume replays the same batch (the Trainer restores the sampler's order) from the same weights.
    by_attempt = [replayed.filter(pl.col("loss") == v) for v in replayed["loss"].unique()]
    assert all(group.height == 2 for group in by_attempt)

    logset = logs.open_logs([first.carto_log_dir])
    assert (logset.num_rows, logset.replayed_rows) == (24, 4)
    summary = run("logs", "summary", first.carto_log_dir, "--json")
    assert summary.exit_code == 0, summary.output
    facts = json.loads(summary.stdout)
    assert (facts["rows"], facts["replayed_rows"], facts["samples"], facts["epochs"]) == (24, 4, 12, 2)

    scores_path = tmp_path / "scores.parquet"
    scored = run("score", first.carto_log_dir, "--out", scores_path)
    assert scored.exit_code == 0, scored.output
    scores = pl.read_parquet(scores_path)
    assert scores["sample_id"].sort().to_list() == list(range(12))
    assert (scores["n_seen"] == 2).all()


# ------------------------------------------------------------------ log directory, run id, logger


def test_the_log_directory_is_carto_log_dir_then_the_environment_then_output_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def trainer(**kwargs) -> CartoTrainer:
        return CartoTrainer(model=tiny_gpt(), args=training_args(tmp_path / "out"), train_dataset=Corpus(), **kwargs)

    assert trainer().carto_log_dir == tmp_path / "out" / "carto_logs"
    assert trainer(carto_log_dir=tmp_path / "mine").carto_log_dir == tmp_path / "mine"
    monkeypatch.setenv("CARTO_LOG_DIR", str(tmp_path / "env"))
    assert trainer().carto_log_dir == tmp_path / "env"
    with pytest.raises(OptionError, match="pass carto_logger= or carto_log_dir=, not both"):
        trainer(carto_logger=CartoLogger(tmp_path / "x"), carto_log_dir=tmp_path / "y")


def run_ids(log_dir: Path) -> set[str]:
    return {pq.read_schema(p).metadata[schema.META_RUN_ID.encode()].decode() for p in log_dir.glob("*.parquet")}


def test_the_run_id_is_the_environments_then_run_name_then_the_directorys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = train(tmp_path / "a", run_name="exp-7")
    assert run_ids(named.carto_log_dir) == {"exp-7"}
    monkeypatch.setenv("CARTO_RUN_ID", "from-env")
    assert run_ids(train(tmp_path / "b", run_name="exp-7").carto_log_dir) == {"from-env"}
    monkeypatch.delenv("CARTO_RUN_ID")
    plain = train(tmp_path / "c")
    assert run_ids(plain.carto_log_dir) == {default_run_id(plain.carto_log_dir)}


def test_a_logger_passed_in_is_used_and_left_open(tmp_path: Path) -> None:
    logger = CartoLogger(tmp_path / "mine", run_id="given")
    trainer = CartoTrainer(model=tiny_gpt(), args=training_args(tmp_path / "out"), train_dataset=Corpus(),
                           carto_logger=logger)
    trainer.train()
    assert trainer.carto_logger is logger and trainer.carto_log_dir == tmp_path / "mine"
    assert raw_rows(tmp_path / "mine").height == 24  # flushed by train()
    logger.record([99], epoch=5, step=9, loss=torch.ones(1), correct=torch.ones(1, dtype=torch.bool))  # still open
    logger.close()
    assert raw_rows(tmp_path / "mine").height == 25
    assert not (tmp_path / "out" / "carto_logs").exists()


# ------------------------------------------------------------------ bad input


def test_items_that_are_not_dicts_are_one_line_errors(tmp_path: Path) -> None:
    class Tuples(Corpus):
        def __getitem__(self, i: int):
            item = super().__getitem__(i)
            return item["input_ids"], item["labels"]

    with pytest.raises(OptionError, match="training items must be dicts of model inputs .* got tuple") as info:
        train(tmp_path, Tuples())
    assert "\n" not in str(info.value)


def test_a_sample_id_column_that_is_not_integers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"`sample_id` column must hold integers, got 'a\d+'; map it to integers"):
        train(tmp_path, Corpus(sample_ids=[f"a{i}" for i in range(12)]))


@pytest.mark.parametrize("key", [ID_KEY, KEEP_KEY])
def test_a_dataset_with_a_reserved_column_is_refused(tmp_path: Path, key: str) -> None:
    """A `__carto_keep__` column reached compute_loss as the padding mask and dropped its rows
    without a word; a `__carto_sample_id__` column was overwritten. (remove_unused_columns=False:
    otherwise the Trainer strips the first before the collator.)"""
    class Reserved(Corpus):
        def __getitem__(self, i: int) -> dict:
            return {**super().__getitem__(i), key: False if key == KEEP_KEY else 7}

    with pytest.raises(OptionError, match=f"the training dataset has a column `{key}`, a name CartoTrainer "
                                          "reserves .*; rename or drop that column") as info:
        train(tmp_path, Reserved(), remove_unused_columns=False)
    assert "\n" not in str(info.value)


def test_packed_batches_are_refused(tmp_path: Path) -> None:
    """DataCollatorWithFlattening puts the whole batch in one row: there is no row per sample."""
    class Plain(Corpus):
        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.x[i].tolist(), "labels": self.x[i].tolist()}

    trainer = CartoTrainer(model=tiny_gpt(), args=training_args(tmp_path), train_dataset=Plain(),
                           data_collator=DataCollatorWithFlattening())
    with pytest.raises(OptionError, match="logits have 1 rows but the batch has 4 samples; .* packing"):
        trainer.train()


def test_an_iterable_dataset_needs_a_sample_id_column(tmp_path: Path) -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __init__(self, with_ids: bool) -> None:
            self.data, self.with_ids = Corpus(), with_ids

        def __iter__(self):
            for i in range(len(self.data)):
                item = self.data[i]
                yield {**item, schema.SAMPLE_ID: 300 + i} if self.with_ids else item

    rows = raw_rows(train(tmp_path / "a", Stream(True), max_steps=3).carto_log_dir)
    assert rows["sample_id"].to_list() == sorted(rows["sample_id"].to_list())  # no sampler: stream order
    assert sorted(rows["sample_id"].to_list()) == list(range(300, 312))
    with pytest.raises(OptionError, match="iterable training dataset has no indices; give every item an integer"):
        train(tmp_path / "b", Stream(False), max_steps=3)


def test_the_reserved_key_never_reaches_the_model_or_the_collator(tmp_path: Path) -> None:
    seen_keys = set()

    def collate(features: list[dict]) -> dict:
        seen_keys.update(*(f.keys() for f in features))
        return {k: torch.stack([f[k] for f in features]) for k in ("input_ids", "attention_mask", "labels")}

    train(tmp_path, data_collator=collate)
    assert seen_keys == {"input_ids", "attention_mask", "labels"}  # text stripped, the id taken out


# ------------------------------------------------------------------ several processes: the padding repeats


def test_one_process_puts_no_mask_on_the_batches(tmp_path: Path) -> None:
    """Nothing pads with one process: no batch gets a keep mask, record(keep=None), no cost."""
    seen = []

    class Watching(CartoTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append(sorted(k for k in inputs if k.startswith("__carto")))
            return super().compute_loss(model, inputs, *args, **kwargs)

    trainer = train(tmp_path, trainer_class=Watching)
    assert seen == [[ID_KEY]] * 6 and trainer._carto_batches is None


def shard_loaders(dataset, batch: int, **options) -> list:
    """The loaders Accelerate's `prepare` gives ranks 0 and 1 of 2 over the Trainer's wrapped dataset."""
    base = torch.utils.data.DataLoader(indexed(dataset), batch_size=batch, collate_fn=IdCollator(default_data_collator))
    return [prepare_data_loader(base, num_processes=2, process_index=rank, put_on_device=False, **options)
            for rank in (0, 1)]


def masked(loader) -> tuple[list[int], list[int]]:
    """(ids loaded, ids kept) over one iteration of `loader`, masked as CartoTrainer masks the Trainer's batches."""
    loaded_ids, kept = [], []
    for batch in PaddingMasks(iter(loader), GradientState(), 2):
        ids = batch[ID_KEY].tolist()
        keep = batch.get(KEEP_KEY, [True] * len(ids))
        loaded_ids += ids
        kept += [i for i, k in zip(ids, keep, strict=True) if k]
    return loaded_ids, kept


@pytest.mark.parametrize("split", [False, True], ids=["even_batches", "split_batches"])
@pytest.mark.parametrize(("n", "batch"), [(21, 2), (13, 4), (16, 4), (5, 8)])
def test_the_masks_keep_every_sample_once_over_the_ranks(n: int, batch: int, split: bool) -> None:
    """Accelerate's real sharding, both ranks in one process, as the Trainer iterates them (also after
    skip_first_batches on a resume: the skipped batches count)."""
    loaders = shard_loaders(Corpus(n), batch, split_batches=split)
    runs = [masked(loader) for loader in loaders]
    assert sorted(kept for _, ids in runs for kept in ids) == list(range(n))
    round_rows = batch if split else 2 * batch  # rows a round of batches over both ranks holds
    assert sum(len(ids) for ids, _ in runs) == n + (-n % round_rows)  # the repeats were loaded
    for loader, (_, kept) in zip(loaders, runs, strict=True):
        if len(loader) > 2:  # the first 2 batches (round_rows // 2 rows each on a rank) hold no repeat
            assert masked(skip_first_batches(loader, 2))[1] == kept[2 * (round_rows // 2):]


def test_loaders_that_repeat_nothing_get_no_mask() -> None:
    assert padding_rule(shard_loaders(Corpus(21), 2, even_batches=False)[1]) is None
    assert padding_rule(shard_loaders(Corpus(21), 2, split_batches=True)[1]) is not None
    assert padding_rule(torch.utils.data.DataLoader(indexed(Corpus(21)), batch_size=2)) is None


def test_the_dispatchers_repeats_are_the_last_rows_past_the_remainder() -> None:
    """The last round had 5 rows; 2 ranks get 3 each of them plus the epoch's first: rank 1's last repeats."""
    assert dispatched_keep(0, 3, last=True, remainder=5).tolist() == [True, True, True]
    assert dispatched_keep(1, 3, last=True, remainder=5).tolist() == [True, True, False]
    assert dispatched_keep(1, 1, last=True, remainder=1).tolist() == [False]
    assert dispatched_keep(1, 4, last=False, remainder=-1).tolist() == [True] * 4


def test_repeats_carto_cannot_tell_apart_are_one_line_errors() -> None:
    stream = shard_loaders(Stream(13), 4, dispatch_batches=False)[1]  # IterableDatasetShard: pads unseen
    with pytest.raises(OptionError, match="sharded on every process .* set dataloader_drop_last=True") as info:
        padding_rule(stream)
    rebalanced = BatchRebalanceSampler(lengths=[T] * 5, effective_batch_size=4, dp_size=2, grad_accum=2,
                                       drop_last=False)  # a tail of 1 sample for 4 (rank, micro-batch) groups
    loader = torch.utils.data.DataLoader(indexed(Corpus(5)), batch_sampler=rebalanced)
    with pytest.raises(OptionError, match="'batch_rebalance' fills the epoch's last 1 samples up to 4 with repeats"):
        padding_rule(loader)
    foreign = prepare_data_loader(torch.utils.data.DataLoader([{ID_KEY: i} for i in range(3)], batch_size=2),
                                  num_processes=2, process_index=0, put_on_device=False)
    with pytest.raises(OptionError, match="the training batches come from another loader"):
        masked(foreign)
    assert "\n" not in str(info.value)


class Stream(torch.utils.data.IterableDataset):
    """An iterable dataset of `Corpus(n)` items with `sample_id` 300 + i (an iterable has no index)."""

    def __init__(self, n: int) -> None:
        self.data = Corpus(n)

    def __iter__(self):
        for i in range(len(self.data)):
            yield {**self.data[i], schema.SAMPLE_ID: 300 + i}


class Recording(CartoTrainer):
    """Writes down the ids of every training batch its forward gets, repeats included (what would be
    logged without the mask): [epoch, step, ids] in `loaded`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loaded = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training and ID_KEY in inputs:
            self.loaded.append([self._carto_epoch, self.state.global_step, inputs[ID_KEY].tolist()])
        return super().compute_loss(model, inputs, *args, **kwargs)


def ddp_worker(out: Path) -> None:
    """One rank of the 2-process run (`python tests/test_integration_hf.py --ddp-worker OUT` under
    torchrun): three trainings on gloo, each writing the ids its rank loaded to OUT/<name>-r<rank>.json.

    - "map": 21 samples, batches of 2, 2 accumulated, 2 epochs (3 steps an epoch); checkpoint-4,
      stopped after step 5 (steps 0..4 logged);
    - "resumed": the same run resumed from checkpoint-4 by a new trainer: epoch 1 with its first 2
      batches skipped (steps 4 and 5);
    - "stream": an iterable dataset of 13 samples, batches of 4, through Accelerate's dispatcher, 2 passes.
    """
    rank = int(os.environ["RANK"])
    settings = dict(ddp_backend="gloo", dataloader_drop_last=False, logging_steps=100)

    def run_one(name: str, trainer: Recording, **train_kwargs) -> None:
        trainer.train(**train_kwargs)
        (out / f"{name}-r{rank}.json").write_text(json.dumps(trainer.loaded))

    map_args = training_args(out / "map", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             save_strategy="steps", save_steps=4, **settings)
    run_one("map", Recording(model=tiny_gpt(), args=map_args, train_dataset=Corpus(21), callbacks=[StopAt(5)]))
    run_one("resumed", Recording(model=tiny_gpt(), args=map_args, train_dataset=Corpus(21)),
            resume_from_checkpoint=str(out / "map" / "checkpoint-4"))
    stream_args = training_args(out / "stream", max_steps=4, **settings)
    run_one("stream", Recording(model=tiny_gpt(), args=stream_args, train_dataset=Stream(13)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-process run of `ddp_worker`, once for the tests that read it."""
    out = tmp_path_factory.mktemp("ddp")
    unset = ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "CARTO_LOG_DIR", "CARTO_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(Path(__file__).resolve()), "--ddp-worker", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out


def loaded(out: Path, name: str, rank: int) -> dict[int, list[int]]:
    """epoch -> the ids rank `rank` loaded in that epoch, in order."""
    per_epoch = {}
    for epoch, _, ids in json.loads((out / f"{name}-r{rank}.json").read_text()):
        per_epoch.setdefault(epoch, []).extend(ids)
    return per_epoch


def attempt_rows(log_dir: Path) -> list[pl.DataFrame]:
    """Every attempt's rows (one attempt per process and train() call), from each part's metadata."""
    frames = {}
    for part in sorted(log_dir.glob("*.parquet")):
        attempt = pq.read_schema(part).metadata[schema.META_ATTEMPT.encode()].decode()
        frames.setdefault(attempt, []).append(pl.read_parquet(part))
    return [pl.concat(parts) for parts in frames.values()]


def check_rank_logged_its_loads_less_the_tail(rows: pl.DataFrame, loads: dict[int, list[int]], rank: int,
                                              repeats: int, counted: pl.DataFrame) -> None:
    """In every epoch of `loads` the rank logged (`rows`) exactly what it loaded less its last `repeats`
    rows, and those are samples the log counts elsewhere in the epoch (`counted`): the repeats that pad
    the end of the epoch."""
    for epoch, ids in loads.items():
        logged = rows.filter((pl.col("epoch") == epoch) & (pl.col("rank") == rank))["sample_id"].to_list()
        assert sorted(logged) == sorted(ids[:len(ids) - repeats]), (rank, epoch)
        in_epoch = set(counted.filter(pl.col("epoch") == epoch)["sample_id"])
        assert set(ids[len(ids) - repeats:]) <= in_epoch, (rank, epoch)


def score(log_dir: Path, tmp_path: Path) -> pl.DataFrame:
    scored = run("score", log_dir, "--out", tmp_path / "scores.parquet")
    assert scored.exit_code == 0, scored.output
    return pl.read_parquet(tmp_path / "scores.parquet").sort("sample_id")


def test_two_processes_log_each_sample_once_an_epoch_although_accelerate_repeats_some(
        ddp_run: Path, tmp_path: Path) -> None:
    """21 samples in batches of 2 on 2 ranks: Accelerate deals 11 batches round robin and completes the
    short last round from the start of the epoch, so rank 0 loads 12 rows (its last a repeat) and rank
    1 12 rows (its last batch, 2 rows, repeats). Without the mask 3 samples would count twice an epoch.
    The run stops after step 5 and resumes from checkpoint-4, skipping the epoch's first 2 batches:
    the skipped batches count, or rank 1's last batch would be logged."""
    log_dir = ddp_run / "map" / "carto_logs"
    loads = {(name, rank): loaded(ddp_run, name, rank) for name in ("map", "resumed") for rank in (0, 1)}
    for rank in (0, 1):
        assert [len(loads["map", rank][e]) for e in (0, 1)] == [12, 8]  # epoch 1 stopped after 2 of 3 steps
        assert list(loads["resumed", rank]) == [1] and len(loads["resumed", rank][1]) == 8  # batches 2..5
    epoch0 = loads["map", 0][0] + loads["map", 1][0]
    assert len(epoch0) == 24 and len(set(epoch0)) == 21  # what logging every forward would have counted

    attempts = attempt_rows(log_dir)
    assert sorted((a["rank"].unique().to_list(), a["step"].min()) for a in attempts) == [
        ([0], 0), ([0], 4), ([1], 0), ([1], 4)]  # both ranks wrote parts, in both train() calls
    first_rows = pl.concat([a for a in attempts if a["step"].min() == 0])
    second_rows = pl.concat([a for a in attempts if a["step"].min() == 4])
    assert first_rows["step"].unique().sort().to_list() == [0, 1, 2, 3, 4]
    assert second_rows["step"].unique().sort().to_list() == [4, 5]
    counted = pl.concat([first_rows.filter(pl.col("step") < 4), second_rows])  # the replay rule, by hand
    for rank, repeats in ((0, 1), (1, 2)):
        check_rank_logged_its_loads_less_the_tail(first_rows, {0: loads["map", rank][0]}, rank, repeats, counted)
        check_rank_logged_its_loads_less_the_tail(first_rows, {1: loads["map", rank][1]}, rank, 0, counted)
        check_rank_logged_its_loads_less_the_tail(second_rows, loads["resumed", rank], rank, repeats, counted)
    per_epoch = counted.group_by("sample_id", "epoch").len()
    assert per_epoch.height == 2 * 21 and (per_epoch["len"] == 1).all()

    facts = json.loads(run("logs", "summary", log_dir, "--json").stdout)
    assert (facts["rows"], facts["samples"], facts["epochs"]) == (42, 21, 2)
    assert facts["replayed_rows"] == first_rows.filter(pl.col("step") == 4).height == 8  # 2 x 2 rows, 2 ranks
    scores = score(log_dir, tmp_path)
    assert scores["sample_id"].to_list() == list(range(21)) and (scores["n_seen"] == 2).all()


def test_two_processes_leave_out_the_repeats_of_accelerates_dispatcher(ddp_run: Path, tmp_path: Path) -> None:
    """An iterable dataset of 13 samples, batches of 4, 2 ranks: rank 0 loads and splits each round of
    8; the last round has 5 rows, completed to 6 with the epoch's first: rank 1's last row repeats."""
    log_dir = ddp_run / "stream" / "carto_logs"
    rows = raw_rows(log_dir)
    assert {int(pq.read_schema(p).metadata[schema.META_RANK.encode()]) for p in log_dir.glob("*.parquet")} == {0, 1}
    for rank, repeats in ((0, 0), (1, 1)):
        loads = loaded(ddp_run, "stream", rank)
        assert sorted(loads) == [0, 1] and [len(ids) for ids in loads.values()] == [7, 7]
        check_rank_logged_its_loads_less_the_tail(rows, loads, rank, repeats, rows)
    epoch0 = loaded(ddp_run, "stream", 0)[0] + loaded(ddp_run, "stream", 1)[0]
    assert len(epoch0) == 14 and len(set(epoch0)) == 13
    per_epoch = rows.group_by("sample_id", "epoch").len()
    assert per_epoch.height == 2 * 13 and (per_epoch["len"] == 1).all()
    scores = score(log_dir, tmp_path)
    assert scores["sample_id"].to_list() == list(range(300, 313)) and (scores["n_seen"] == 2).all()


# ------------------------------------------------------------------ TRL


def test_the_mixin_logs_trl_sft_trainer_from_its_fused_lm_head(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl", reason="trl is optional")
    datasets = pytest.importorskip("datasets", reason="trl needs datasets")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    class CartoSFTTrainer(CartoTrainerMixin, trl.SFTTrainer):
        pass

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({f"t{i}": i for i in range(V)},
                                                                             unk_token="t0")),
                                        pad_token="t0", eos_token="t0", unk_token="t0")
    data = Corpus()
    ids = [200 + i for i in range(12)]
    dataset = datasets.Dataset.from_dict({"input_ids": [data.x[i].tolist() for i in range(12)], "sample_id": ids})
    config = trl.SFTConfig(str(tmp_path / "sft"), per_device_train_batch_size=4, num_train_epochs=2, report_to=[],
                           save_strategy="no", use_cpu=True, disable_tqdm=True, max_length=T, seed=0)
    trainer = CartoSFTTrainer(model=tiny_gpt(dropout=0.0), args=config, train_dataset=dataset,
                              processing_class=tokenizer)
    trainer.train()
    rows = raw_rows(trainer.carto_log_dir)
    assert rows.height == 24
    assert sorted(rows.filter(pl.col("epoch") == 0)["sample_id"].to_list()) == ids
    first = rows.filter(pl.col("step") == 0)
    index = [i - 200 for i in first["sample_id"].to_list()]
    batch = {"input_ids": data.x[index], "attention_mask": torch.ones(4, T, dtype=torch.long), "labels": data.x[index]}
    expected = per_sample_loss(tiny_gpt(dropout=0.0).eval(), batch)  # TRL's labels: every token
    # to 1e-3, not 1e-5: TRL's fused head computes the log-probs with its own kernel, not from the logits
    assert torch.allclose(torch.tensor(first["loss"].to_list()), expected, atol=1e-3)
    assert (first["n_tokens"] == T - 1).all()


# ------------------------------------------------------------------ the example


def test_the_example_trains_logs_and_scores(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--out", str(out),
                             "--epochs", "2", "--samples", "96"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"carto score {out / 'carto_logs'} --data {out / 'corpus.jsonl'} --tokenizer bytes" in result.stdout
    scored = run("score", out / "carto_logs", "--out", tmp_path / "scores.parquet")
    assert scored.exit_code == 0, scored.output
    scores = pl.read_parquet(tmp_path / "scores.parquet")
    assert scores["sample_id"].sort().to_list() == list(range(96))
    assert (scores["n_seen"] == 2).all()


if __name__ == "__main__":  # one rank of the 2-process run (see ddp_run)
    if sys.argv[1:2] != ["--ddp-worker"] or len(sys.argv) != 3:
        raise SystemExit("usage: torchrun --nproc_per_node=2 tests/test_integration_hf.py --ddp-worker OUT")
    ddp_worker(Path(sys.argv[2]))
