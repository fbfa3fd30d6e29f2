"""The helpers that turn a manifest or weights file into what the next training run consumes, and the
ids a kept subset is logged under by a plain loop or Lightning (`IndexedDataset`); CartoTrainer's
are in test_integration_hf.py."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from carto_cli.errors import OptionError, ScoresFormatError
from carto_cli.export.sampling import kept_indices, kept_subset, sample_weight_array, weighted_sampler
from carto_cli.export.subsets import sample_id_at
from carto_cli.integrations.distributed import IndexedDataset
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


def logged(dataset) -> list[tuple[int, str]]:
    """(id, item) of every item, as a plain loop over IndexedDataset(dataset) logs them."""
    ids, items = [], []
    for batch_ids, batch in torch.utils.data.DataLoader(IndexedDataset(dataset), batch_size=4,
                                                        collate_fn=lambda rows: tuple(zip(*rows, strict=True))):
        ids += batch_ids
        items += batch
    return list(zip(ids, items, strict=True))


def test_a_plain_loop_logs_a_kept_subset_under_the_datasets_ids(manifest: Path) -> None:
    """Sample 11 is pruned: the 13 kept samples are logged under their own ids, not 0..12 (sample 12
    logged as 11 would have brought the pruned id back, and 13 would have vanished)."""
    dataset = [f"s{i}" for i in range(14)]
    subset = kept_subset(dataset, manifest)
    assert logged(subset) == [(i, f"s{i}") for i in range(14) if i != 11]
    nested = torch.utils.data.Subset(subset, [10, 11, 12])  # subset positions 10, 11, 12: samples 10, 12, 13
    assert logged(nested) == [(10, "s10"), (12, "s12"), (13, "s13")]
    assert [sample_id_at(nested, i) for i in range(3)] == [10, 12, 13]
    assert dataset == [f"s{i}" for i in range(14)]  # not modified


def test_a_kept_subset_records_the_ids_it_was_matched_to(manifest: Path) -> None:
    """Index -> id given: the subset's items are logged under those ids, through nested subsets too;
    an explicit IndexedDataset(sample_ids=...) still wins."""
    subset = kept_subset(["w", "x", "y", "z"], manifest, sample_ids=[12, 11, 10, 13])  # x (11) pruned
    assert logged(subset) == [(12, "w"), (10, "y"), (13, "z")]
    assert logged(torch.utils.data.Subset(subset, [2, 0])) == [(13, "z"), (12, "w")]
    assert IndexedDataset(subset, sample_ids=[7, 8, 9])[1] == (8, "y")
    with pytest.raises(OptionError, match=r"^kept_subset: sample_ids has 2 entries but the dataset 4; pass one"):
        kept_subset(["w", "x", "y", "z"], manifest, sample_ids=[10, 11])


def test_a_sample_id_column_is_matched_or_must_be_given(manifest: Path) -> None:
    """Items with a `sample_id` column: a datasets.Dataset's is read whole; any other dataset's
    would need a pass over every item, so it must be passed (matching indices prunes other samples)."""
    rows = [{"sample_id": 13 - i, "text": f"t{i}"} for i in range(4)]  # ids 13, 12, 11, 10
    with pytest.raises(OptionError, match=r"^kept_subset: the dataset's items have a `sample_id` column"):
        kept_subset(rows, manifest)
    assert kept_subset(rows, manifest, sample_ids=[13, 12, 11, 10]).indices == [0, 1, 3]
    datasets = pytest.importorskip("datasets", reason="the datasets library is optional")
    table = datasets.Dataset.from_list(rows)
    for formatted in (table, table.with_format("torch")):
        subset = kept_subset(formatted, manifest)
        assert subset.indices == [0, 1, 3]  # 11 pruned
        assert [i for i, _ in logged(subset)] == [13, 12, 10]
