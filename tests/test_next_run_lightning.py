"""The next Lightning run with carto's exports, as docs/integrations/lightning.md shows it: a
manifest (`kept_subset` in an `IndexedDataset`), weights (`weighted_sampler` in the loader) and a
mask (`LossMask.mask_batch` on the targets in `training_step`), each logged by `CartoCallback` under the
dataset's own ids. The model and data are examples/lightning_train.py's (a tiny next-token model
on 24 generated sequences); the files are written as `carto prune`, `carto weights` and `carto
mask` write them.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import pytest

lightning = pytest.importorskip("lightning", reason="the Lightning callback needs the lightning extra")

import polars as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from carto_cli import kept_subset, weighted_sampler  # noqa: E402
from carto_cli.export.masks import LossMask  # noqa: E402
from carto_cli.integrations.distributed import IndexedDataset  # noqa: E402
from carto_cli.integrations.lightning import CartoCallback  # noqa: E402
from carto_cli.io import artifacts, logs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 24


def example():
    spec = importlib.util.spec_from_file_location("lightning_train_example", ROOT / "examples" / "lightning_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fit(model, loader, log_dir: Path, epochs: int = 2) -> pl.DataFrame:
    """`trainer.fit` with CartoCallback, as the docs have it; the rows it logged."""
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    trainer = lightning.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                callbacks=[CartoCallback(log_dir=str(log_dir))], enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    return logs.scan(logs.open_logs([str(log_dir)]), ["sample_id", "epoch", "n_tokens"]).collect()


def write(frame: pl.DataFrame, path: Path, kind: str) -> Path:
    artifacts.write(frame, path, artifacts.provenance(kind, inputs=[], parameters={}))
    return path


def test_a_manifest_the_kept_subset_keeps_its_ids(tmp_path: Path) -> None:
    ex = example()
    pruned = {3, 7, 11}
    manifest = write(pl.DataFrame({"sample_id": range(N), "keep": [i not in pruned for i in range(N)],
                                   "quadrant": ["noisy-outlier"] * N}), tmp_path / "manifest.parquet", "manifest")
    data = ex.make_data(N, 0)
    loader = DataLoader(IndexedDataset(kept_subset(data, manifest)), batch_size=8, shuffle=True)
    rows = fit(ex.TinyLM(), loader, tmp_path / "logs")
    assert set(rows["sample_id"].to_list()) == set(range(N)) - pruned  # not positions 0..20 of the subset
    assert rows.height == 2 * (N - len(pruned))


def test_weights_the_sampler_in_the_loader(tmp_path: Path) -> None:
    ex = example()
    never = set(range(6))
    weights = write(pl.DataFrame({"sample_id": range(N), "weight": [0.0 if i in never else 1.0 for i in range(N)],
                                  "quadrant": ["stable-easy"] * N}), tmp_path / "weights.parquet", "weights")
    data = ex.make_data(N, 0)
    loader = DataLoader(IndexedDataset(data), batch_size=8, sampler=weighted_sampler(weights, len(data)))
    rows = fit(ex.TinyLM(), loader, tmp_path / "logs")
    assert rows.height == 2 * N and not set(rows["sample_id"].to_list()) & never


def test_a_mask_on_the_targets_in_training_step(tmp_path: Path) -> None:
    ex = example()
    spans = pl.DataFrame({"sample_id": [2, 5], "start": [3, 0], "length": [4, 2]})
    mask = LossMask.read(write(spans, tmp_path / "mask.parquet", "mask"))

    class Masked(ex.TinyLM):  # as docs/integrations/lightning.md shows it
        def training_step(self, batch, batch_idx):
            ids, x = batch  # (B,), (B, LENGTH)
            y = mask.mask_batch(ids, x[:, 1:], target_offset=1)  # as docs/integrations/lightning.md shows it
            logits = self.head(self.embed(x[:, :-1]))  # (B, T, V): position t predicts x[:, t + 1]
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
            return {"loss": loss, "carto_ids": ids, "carto_logits": logits.detach(), "carto_labels": y}

    data = ex.make_data(N, 0)
    rows = fit(Masked(), DataLoader(IndexedDataset(data), batch_size=8, shuffle=True), tmp_path / "logs")
    targets = dict(rows.group_by("sample_id").agg(pl.col("n_tokens").first()).iter_rows())
    full = ex.LENGTH - 1
    # sample 2: tokens 3..6 masked (4 targets); sample 5: tokens 0..1, of which only 1 is a target
    assert targets == {i: full - 4 if i == 2 else full - 1 if i == 5 else full for i in range(N)}
