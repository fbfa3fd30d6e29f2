"""Sample ids through torch `Subset`s: a subset of a dataset keeps the dataset's own ids.

`kept_subset` (carto_cli.export.sampling) drops the pruned samples of a dataset with a torch
`Subset`, whose item `i` is item `indices[i]` of the dataset it was cut from. A training loop that
logs the position in what it trains on would log `i`, and carto would then read every row of the
next run's log as another sample (a run on a 90% subset logs ids 0..0.9N-1: the last tenth of the
ids vanish, the others shift). So every place carto gives a dataset item its id (`CartoTrainer`'s
dataset wrapper, `IndexedDataset` for Lightning and plain loops) asks `sample_id_at`, which follows
the subsets down (nested ones too) to the index in the innermost dataset, or to the id that
`kept_subset(..., sample_ids=...)` recorded for that index.

An item's own `sample_id` column, where a dataset has one, is the id before any of this (it
travels through subsets unchanged); callers check it first. Other wrappers (`ConcatDataset`,
`datasets.Dataset.select`/`filter`) are not followed: give such datasets a `sample_id` column.
"""

from __future__ import annotations

from typing import Any

from carto_cli.errors import require_torch

# Attribute of a Subset made by kept_subset(sample_ids=...): index in the subset's dataset -> sample id
SAMPLE_IDS_ATTR = "carto_sample_ids"


def sample_id_at(dataset: Any, index: int) -> int:
    """The sample id of item `index` of `dataset`: `index` itself unless `dataset` is a torch `Subset`,
    which maps it to its dataset's index (recursively), or to the id it records under SAMPLE_IDS_ATTR."""
    subset_type = require_torch().utils.data.Subset
    index = int(index)
    while isinstance(dataset, subset_type):
        index = int(dataset.indices[index])  # now an index into dataset.dataset
        recorded = getattr(dataset, SAMPLE_IDS_ATTR, None)
        if recorded is not None:
            return int(recorded[index])
        dataset = dataset.dataset
    return index
