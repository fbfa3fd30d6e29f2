"""The helpers that turn a manifest or weights file into what the next training run consumes."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from carto_cli.errors import ScoresFormatError
from carto_cli.export.sampling import kept_indices, kept_subset, sample_weight_array, weighted_sampler
from carto_cli.io import artifacts


def write(path: Path, kind: str, df: pl.DataFrame) -> Path:
    artifacts.write(df, path, artifacts.provenance(kind, inputs=[], parameters={}))
    return path


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    df = pl.DataFrame({"sample_id": [10, 11, 12], "keep": [True, False, True], "quadrant": ["stable-easy"] * 3})
    return write(tmp_path / "m.parquet", "manifest", df)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    df = pl.DataFrame({"sample_id": [10, 11, 12], "weight": [0.5, 2.0, 0.0], "quadrant": ["stable-easy"] * 3})
    return write(tmp_path / "w.parquet", "weights", df)


def test_kept_indices_map_dataset_positions_to_sample_ids(manifest: Path) -> None:
    # dataset index -> sample_id: 13 is not in the manifest, so it is kept
    assert kept_indices(manifest, sample_ids=[12, 11, 10, 13]) == [0, 2, 3]
    assert kept_indices(manifest, 14) == list(range(14))[:11] + [12, 13]


def test_kept_subset_is_a_torch_subset(manifest: Path) -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(14))
    subset = kept_subset(dataset, manifest)
    assert len(subset) == 13 and 11 not in subset.indices


def test_weights_default_to_one_for_unknown_samples(weights: Path) -> None:
    assert sample_weight_array(weights, sample_ids=[11, 99, 12, 10]).tolist() == [2.0, 1.0, 0.0, 0.5]


def test_weighted_sampler_never_draws_a_zero_weight(weights: Path) -> None:
    sampler = weighted_sampler(weights, sample_ids=[10, 11, 12], num_samples=500,
                               generator=torch.Generator().manual_seed(0))
    drawn = list(sampler)
    assert len(drawn) == 500 and 2 not in drawn
    assert drawn.count(1) > drawn.count(0)  # weight 2.0 against 0.5


def test_wrong_kind_of_file_is_refused(manifest: Path) -> None:
    with pytest.raises(ScoresFormatError, match="not a carto weights file"):
        sample_weight_array(manifest, 3)
