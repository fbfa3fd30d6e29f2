"""CartoCallback under a real `lightning.Trainer` on CPU: one row per presentation with the right ids
(a kept subset's too), epochs and steps (gradient accumulation too), flushed at checkpoints, closed on
an exception, the logits not kept, the declared label shift set on the logger, bad outputs reported
in one line, and the example script run on two DDP processes (gloo) with the sampler's padding left
out and the result scored by `carto score`."""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import lightning
import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from typer.testing import CliRunner

from carto_cli import CartoLogger
from carto_cli.cli import app
from carto_cli.errors import OptionError
from carto_cli.export.sampling import kept_subset
from carto_cli.integrations import lightning as lightning_module
from carto_cli.integrations.distributed import IndexedDataset
from carto_cli.integrations.lightning import CARTO_KEYS, CartoCallback
from carto_cli.io import artifacts

ROOT = Path(__file__).resolve().parent.parent
VOCAB, LENGTH = 16, 9
N, BATCH = 22, 4  # 6 batches an epoch, the last of 2 rows

torch.set_num_threads(1)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def tokens(n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (n, LENGTH), generator=g)  # (n, LENGTH)


class TinyLM(lightning.LightningModule):
    """An embedding and a linear head (about 400 parameters); `mode` picks what training_step returns."""

    def __init__(self, mode: str = "logits", fail_at: int | None = None) -> None:
        super().__init__()
        self.mode, self.fail_at = mode, fail_at
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)
        self.logits_refs: list[weakref.ref] = []

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step >= self.fail_at:
            raise RuntimeError("boom")
        ids, x = batch
        logits = self.head(self.embed(x[:, :-1]))  # (B, T, V)
        labels = x[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        self.logits_refs.append(weakref.ref(logits))
        if self.mode == "logits":  # not detached: the callback must not keep them alive
            return {"loss": loss, "carto_ids": ids, "carto_logits": logits, "carto_labels": labels}
        if self.mode == "values":  # precomputed per-sample values, every other sample masked out
            per_sample = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(dim=1)  # (B,)
            return {"loss": loss, "carto_ids": ids, "carto_loss": per_sample.detach(),
                    "carto_correct": per_sample.detach() < 2.0, "carto_keep": ids % 2 == 0}
        if self.mode == "packed":  # each row holds two documents: ids 100 + 2i (first half), 101 + 2i
            half = labels.shape[1] // 2
            segments = 100 + 2 * ids[:, None] + (torch.arange(labels.shape[1]) >= half).long()  # (B, T)
            return {"loss": loss, "carto_segment_ids": segments, "carto_logits": logits, "carto_labels": labels}
        if self.mode == "typo":
            return {"loss": loss, "carto_ids": ids, "carto_logit": logits, "carto_labels": labels}
        if self.mode == "no-ids":
            return {"loss": loss, "carto_logits": logits, "carto_labels": labels}
        if self.mode == "skip-odd":  # Lightning skips a batch whose step returns None
            return None if batch_idx % 2 else {"loss": loss, "carto_ids": ids, "carto_logits": logits,
                                               "carto_labels": labels}
        return loss  # "tensor": no carto keys at all

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(callbacks: list, *, epochs: int = 2, accumulate: int = 1, **kwargs) -> lightning.Trainer:
    options = dict(max_epochs=epochs, accelerator="cpu", devices=1, accumulate_grad_batches=accumulate,
                   callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False)
    return lightning.Trainer(**{**options, **kwargs})


def loader() -> DataLoader:
    return DataLoader(IndexedDataset(tokens()), batch_size=BATCH, shuffle=False)


def read_log(path: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(path.glob("*.parquet"))).sort("step", maintain_order=True)  # rows in record order


def expected_rows(epochs: int, accumulate: int) -> list[tuple[int, int, int]]:
    """(sample_id, epoch, step) of every presentation: shuffle off, so batch b holds ids 4b..4b+3;
    the step is the optimizer steps done before the batch (Lightning steps at the end of each
    window of `accumulate` micro-batches, and at the end of the epoch)."""
    rows, step = [], 0
    batches = [list(range(lo, min(N, lo + BATCH))) for lo in range(0, N, BATCH)]
    for epoch in range(epochs):
        for b, ids in enumerate(batches):
            rows += [(i, epoch, step) for i in ids]
            if (b + 1) % accumulate == 0 or b == len(batches) - 1:
                step += 1
    return rows


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_every_micro_batch_is_logged_with_its_epoch_and_step(tmp_path: Path, accumulate: int) -> None:
    model = TinyLM()
    initial = copy.deepcopy(model)
    fit = trainer([CartoCallback(log_dir=tmp_path / "logs", rows_per_part=7)], accumulate=accumulate)
    fit.fit(model, loader())
    log = read_log(tmp_path / "logs")
    assert list(zip(log["sample_id"], log["epoch"], log["step"])) == expected_rows(2, accumulate)
    assert log.height == 2 * N and log["rank"].unique().to_list() == [0]
    assert log["loss"].is_not_nan().all() and log["n_tokens"].to_list() == [LENGTH - 1] * (2 * N)
    if accumulate == 4:  # 6 batches: a window of 4 and one of 2 closed by the epoch's end
        assert log.filter(pl.col("epoch") == 0)["step"].to_list() == [0] * 16 + [1] * 6

    # the first batch's logged losses are the untrained model's per-sample losses on ids 0..3
    with torch.no_grad():
        x = tokens()[:BATCH]
        first = F.cross_entropy(initial.head(initial.embed(x[:, :-1])).transpose(1, 2), x[:, 1:],
                                reduction="none").mean(dim=1)
    assert np.allclose(log.head(BATCH)["loss"].to_numpy(), first.numpy(), atol=1e-5)

    result = CliRunner().invoke(app, ["score", str(tmp_path / "logs"), "--out", str(tmp_path / "scores.parquet")])
    assert result.exit_code == 0, result.output
    scores = pl.read_parquet(tmp_path / "scores.parquet").sort("sample_id")
    assert scores["sample_id"].to_list() == list(range(N)) and scores["n_seen"].to_list() == [2] * N


def test_a_kept_subset_is_logged_under_the_datasets_ids(tmp_path: Path) -> None:
    """The next run trains on kept_subset(tokens, manifest) through IndexedDataset: the 18 kept samples
    are logged under their own ids (they were logged as 0..17, so ids 18..21 vanished and the pruned
    ones came back), with their own values."""
    pruned = {2, 3, 11, 17}
    manifest = tmp_path / "manifest.parquet"
    artifacts.write(pl.DataFrame({"sample_id": list(range(N)), "keep": [i not in pruned for i in range(N)],
                                  "quadrant": ["stable-easy"] * N}),
                    manifest, artifacts.provenance("manifest", inputs=[], parameters={}))
    model = TinyLM()
    initial = copy.deepcopy(model)
    data = IndexedDataset(kept_subset(tokens(), manifest))
    trainer([CartoCallback(log_dir=tmp_path / "logs")], epochs=1).fit(model, DataLoader(data, batch_size=BATCH))
    log = read_log(tmp_path / "logs")
    kept = [i for i in range(N) if i not in pruned]
    assert log["sample_id"].to_list() == kept
    with torch.no_grad():
        x = tokens()[kept[:BATCH]]
        first = F.cross_entropy(initial.head(initial.embed(x[:, :-1])).transpose(1, 2), x[:, 1:],
                                reduction="none").mean(dim=1)
    assert np.allclose(log.head(BATCH)["loss"].to_numpy(), first.numpy(), atol=1e-5)


def test_a_declared_label_shift_is_set_on_a_logger_that_records_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mine = CartoLogger(tmp_path / "mine")
    trainer([CartoCallback(mine, label_shift=1)], epochs=1).fit(TinyLM(), loader())
    assert mine.label_shift == 1
    mine.close()
    opened = []

    class Opened(CartoLogger):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(lightning_module, "CartoLogger", Opened)
    trainer([CartoCallback(log_dir=tmp_path / "own", label_shift=0)], epochs=1).fit(TinyLM(), loader())
    trainer([CartoCallback(log_dir=tmp_path / "undeclared")], epochs=1).fit(TinyLM(), loader())
    assert [logger.label_shift for logger in opened] == [0, None]
    with pytest.raises(OptionError, match=r"^CartoCallback: label_shift must be 0, 1 or None, got 2$"):
        CartoCallback(label_shift=2)


def test_precomputed_values_and_the_step_s_own_keep_mask(tmp_path: Path) -> None:
    trainer([CartoCallback(log_dir=tmp_path / "logs", sketch_k=0, sketch_runs=0)], epochs=1).fit(
        TinyLM("values"), loader())
    log = read_log(tmp_path / "logs")
    assert log["sample_id"].to_list() == list(range(0, N, 2))  # carto_keep: even ids only
    assert log["step"].to_list() == [i // BATCH for i in range(0, N, 2)]
    assert (log["correct"] == (log["loss"] < 2.0)).all()


def test_packed_rows_log_each_document(tmp_path: Path) -> None:
    trainer([CartoCallback(log_dir=tmp_path / "logs")], epochs=1).fit(TinyLM("packed"), loader())
    log = read_log(tmp_path / "logs")
    assert sorted(log["sample_id"].to_list()) == list(range(100, 100 + 2 * N))
    assert log["n_tokens"].to_list() == [4] * (2 * N)  # 8 target positions a row, 4 a document
    assert (log.filter(pl.col("sample_id") < 108)["step"] == 0).all()  # rows 0..3: the first batch


def test_a_resumed_run_replays_are_left_out(tmp_path: Path) -> None:
    """Crash in epoch 1 after step 7, resume from the checkpoint saved after step 6 (the end of epoch 0):
    the first attempt's rows of steps 6 and 7 are replays; every sample is scored twice, not three times."""

    class Crash(lightning.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 8:
                raise RuntimeError("crash")

    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6,
                                                              filename="{step}")
    with pytest.raises(RuntimeError, match="crash"):
        trainer([CartoCallback(log_dir=tmp_path / "logs"), Crash(), checkpoints], enable_checkpointing=True).fit(
            TinyLM(), loader())
    assert read_log(tmp_path / "logs")["step"].max() == 7
    trainer([CartoCallback(log_dir=tmp_path / "logs")]).fit(TinyLM(), loader(),
                                                            ckpt_path=str(tmp_path / "ckpt" / "step=6.ckpt"))
    log = read_log(tmp_path / "logs")
    assert log.height == 2 * N + 2 * BATCH  # steps 6 and 7 logged by both attempts
    runner = CliRunner()
    result = runner.invoke(app, ["logs", "summary", str(tmp_path / "logs"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["replayed_rows"], summary["runs"]) == (2 * N, 2 * BATCH, 1)
    result = runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", str(tmp_path / "scores.parquet")])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "scores.parquet")["n_seen"].to_list() == [2] * N


def test_a_skipped_batch_logs_nothing(tmp_path: Path) -> None:
    trainer([CartoCallback(log_dir=tmp_path / "logs")], epochs=1).fit(TinyLM("skip-odd"), loader())
    log = read_log(tmp_path / "logs")
    assert log["sample_id"].to_list() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]  # batches 0, 2, 4
    # Lightning counts a step for the skipped batches too (it calls the optimizer, whose closure skips)
    assert log["step"].to_list() == [0] * 4 + [2] * 4 + [4] * 4


@pytest.mark.parametrize("drop_padding", [True, False])
def test_the_distributed_sampler_s_repeat_is_masked_with_the_step_s_own_mask(tmp_path: Path, drop_padding) -> None:
    """Rank 3 of 4 over 22 samples, its sampler given as is (use_distributed_sampler=False): 6 samples,
    the last a repeat (padded position 23 >= 22). The callback's mask and carto_keep (even ids) combine."""
    data = IndexedDataset(tokens())
    sampler = DistributedSampler(data, num_replicas=4, rank=3, shuffle=True, seed=1)
    fit = trainer([CartoCallback(log_dir=tmp_path / "logs", drop_padding=drop_padding)], epochs=1,
                  use_distributed_sampler=False)
    fit.fit(TinyLM("values"), DataLoader(data, batch_size=BATCH, sampler=sampler))
    loaded = list(sampler)
    expected = [i for i in (loaded[:-1] if drop_padding else loaded) if i % 2 == 0]
    assert loaded[-1] % 2 == 0  # seed 1: the repeat is an even id, so carto_keep alone would log it
    assert read_log(tmp_path / "logs")["sample_id"].to_list() == expected


def test_rows_are_on_disk_when_a_checkpoint_is_saved(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    class CountRowsOnSave(lightning.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            files = sorted((tmp_path / "logs").glob("*.parquet"))
            seen.append((trainer.global_step, pl.read_parquet(files).height if files else 0))

    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2,
                                                              save_top_k=-1)
    fit = trainer([CartoCallback(log_dir=tmp_path / "logs"), CountRowsOnSave(), checkpoints], epochs=1,
                  enable_checkpointing=True)
    fit.fit(TinyLM(), loader())
    # saved after steps 2 and 4 (every row of batches 0..3 on disk), and after 6 (the epoch's end)
    assert seen[:2] == [(2, 2 * BATCH), (4, 4 * BATCH)], seen
    assert seen[-1] == (6, N), seen


def test_an_exception_in_training_writes_what_was_recorded(tmp_path: Path) -> None:
    callback = CartoCallback(log_dir=tmp_path / "logs")
    with pytest.raises(RuntimeError, match="boom"):
        trainer([callback], epochs=1).fit(TinyLM(fail_at=3), loader())
    assert callback.logger is None  # closed
    assert read_log(tmp_path / "logs")["sample_id"].to_list() == list(range(3 * BATCH))


def test_the_logits_are_not_kept(tmp_path: Path) -> None:
    model = TinyLM()
    trainer([CartoCallback(log_dir=tmp_path / "logs")], epochs=1).fit(model, loader())
    gc.collect()
    assert len(model.logits_refs) == 6
    assert all(ref() is None for ref in model.logits_refs)


def test_a_logger_passed_in_is_used_flushed_and_left_open(tmp_path: Path) -> None:
    log = CartoLogger(tmp_path / "logs", run_id="mine")
    trainer([CartoCallback(log)], epochs=1).fit(TinyLM(), loader())
    assert not log._closed  # the user's logger: theirs to close (as CartoTrainer does)
    part = sorted((tmp_path / "logs").glob("*.parquet"))
    assert pl.read_parquet(part).height == N  # every row written by the end of fit
    log.close()


@pytest.mark.parametrize(("mode", "message"), [
    ("typo", "CartoCallback: training_step returned unknown key(s) carto_logit; the known ones are "
             + ", ".join(CARTO_KEYS)),
    ("no-ids", "CartoCallback: training_step must return a dict with 'loss', 'carto_ids' (B,) and either "
               "'carto_logits' (B, T, V) with 'carto_labels' (B, T), or 'carto_loss' (B,) with 'carto_correct' (B,)"),
    ("tensor", "CartoCallback: training_step must return a dict with 'loss', 'carto_ids' (B,) and either "
               "'carto_logits' (B, T, V) with 'carto_labels' (B, T), or 'carto_loss' (B,) with 'carto_correct' (B,)"),
])
def test_bad_training_step_outputs_are_one_line_errors(tmp_path: Path, mode: str, message: str) -> None:
    with pytest.raises(OptionError) as info:
        trainer([CartoCallback(log_dir=tmp_path / "logs")], epochs=1).fit(TinyLM(mode), loader())
    assert str(info.value) == message


def test_logger_and_log_dir_together_are_refused(tmp_path: Path) -> None:
    with CartoLogger(tmp_path / "a") as log, pytest.raises(OptionError, match="pass either logger="):
        CartoCallback(log, log_dir=tmp_path / "b")


def test_the_example_on_two_ddp_processes(tmp_path: Path) -> None:
    """examples/lightning_train.py with --devices 2: Lightning's DDP (gloo) on two CPU processes. 45
    samples over 2 ranks: the DistributedSampler repeats one sample on rank 1 each epoch; the
    callback leaves it out, so every sample is logged once per epoch over both ranks' parts."""
    out = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE")}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_train.py"), "--out", str(out),
                             "--devices", "2", "--epochs", "3"], capture_output=True, text=True, timeout=180,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"logged 2 rank(s) into {out}; next:\n  carto logs summary {out}\n" in result.stdout
    log = pl.read_parquet(sorted(out.glob("*.parquet")))
    assert sorted(log.group_by("rank").len().rows()) == [(0, 3 * 23), (1, 3 * 22)]  # rank 1: 23 less its repeat
    per_epoch = log.group_by("sample_id", "epoch").len()
    assert per_epoch.height == 45 * 3 and (per_epoch["len"] == 1).all()
    result = CliRunner().invoke(app, ["score", str(out), "--out", str(tmp_path / "scores.parquet")])
    assert result.exit_code == 0, result.output
    scores = pl.read_parquet(tmp_path / "scores.parquet")
    assert scores.height == 45 and (scores["n_seen"] == 3).all()
    assert np.isfinite(scores["difficulty"].to_numpy()).all()
