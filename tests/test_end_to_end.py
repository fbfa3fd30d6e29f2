"""From the shim to the next run: real training logged with `carto log`, scored, pruned, weighted,
and the exports consumed by a second training run through the sampling helpers."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import torch
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples
from carto_cli.experiment.tinygpt import GPT, GPTConfig, train_epochs
from carto_cli.export.sampling import kept_subset, sample_weight_array, weighted_sampler

TRAIN = textwrap.dedent(
    """
    import numpy as np, torch
    from carto_cli import CartoLogger
    from carto_cli.experiment.corpus import cpython_text, to_bytes_samples
    from carto_cli.experiment.tinygpt import GPT, GPTConfig, train_epochs

    torch.manual_seed(0)
    torch.set_num_threads(1)
    samples = to_bytes_samples(cpython_text(200 * 33), 32)[:200]     # (200, 33) real text
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    with CartoLogger(rows_per_part=250) as log:                       # dir from $CARTO_LOG_DIR
        train_epochs(model, samples, epochs=3, batch_size=20, lr=3e-3, seed=0, logger=log)
    """
)


def test_train_log_score_prune_weight_and_reuse(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    runner = CliRunner()

    result = runner.invoke(app, ["log", "--", sys.executable, str(script)])
    assert result.exit_code == 0, result.output
    assert "600 rows, 200 samples, 3 epoch(s)" in result.stderr

    result = runner.invoke(app, ["score", "logs"])
    assert result.exit_code == 0, result.output
    scores = pl.read_parquet("scores.parquet")
    assert scores.height == 200
    assert scores["n_seen"].to_list() == [3] * 200  # every sample once per epoch
    assert scores["difficulty"].null_count() == 0 and (scores["difficulty"] > 0).all()
    # difficulty is the mean of the first two epochs' logged losses, recomputed here from the parts
    parts = pl.read_parquet("logs/*.parquet")
    recomputed = parts.filter(pl.col("epoch") < 2).group_by("sample_id").agg(pl.col("loss").cast(pl.Float64).mean())
    joined = scores.join(recomputed, on="sample_id")
    assert np.allclose(joined["difficulty"], joined["loss"], atol=1e-6)

    assert runner.invoke(app, ["prune", "--frac", "0.1"]).exit_code == 0
    assert runner.invoke(app, ["weights"]).exit_code == 0
    manifest = pl.read_parquet("manifest.parquet")
    assert int((~manifest["keep"]).sum()) == 20

    # The next run: drop the pruned samples, draw the rest by weight.
    samples = to_bytes_samples(cpython_text(200 * 33), 32)[:200]
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(samples, dtype=torch.long))
    subset = kept_subset(dataset, "manifest.parquet")
    assert len(subset) == 180
    pruned = set(manifest.filter(~pl.col("keep"))["sample_id"].to_list())
    assert not pruned & set(subset.indices)
    weights = sample_weight_array("weights.parquet", len(dataset))
    assert abs(weights.mean() - 1) < 1e-9
    sampler = weighted_sampler("weights.parquet", len(dataset), generator=torch.Generator().manual_seed(0))
    drawn = list(sampler)
    zero = np.flatnonzero(weights == 0)
    assert len(drawn) == 200 and not set(zero) & set(drawn)

    kept = samples[subset.indices]
    stats = train_epochs(GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32)), kept,
                         epochs=1, batch_size=20, lr=3e-3, seed=1)
    assert stats["steps"] == 9 and np.isfinite(stats["final_train_loss"])
