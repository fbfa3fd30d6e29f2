"""Feed carto's exports to the next training run: a torch Subset from a manifest, a weighted sampler
from a weights file.

    from carto_cli.export.sampling import kept_subset, weighted_sampler
    pruned_set = kept_subset(full_set, "manifest.parquet")              # drop pruned samples
    # or, instead of pruning, draw every sample in proportion to its weight:
    loader = DataLoader(full_set, sampler=weighted_sampler("weights.parquet", len(full_set)))

`sample_ids` maps dataset index -> sample_id; by default index i is sample_id i (as when the
training loop logged the dataset index). Samples absent from the file are kept, with weight 1
(the mean weight), so a file scored on part of the data never silently drops the rest.

The subset keeps the dataset's ids in the next run's log: `CartoTrainer` and `IndexedDataset` give
its item `i` the id of the dataset item it is (`carto_cli.export.subsets`), not `i`, so a sample
pruned now can never come back under another sample's id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from carto_cli.errors import OptionError, require_torch
from carto_cli.export.subsets import SAMPLE_IDS_ATTR
from carto_cli.io import artifacts


def _ids(sample_ids: Sequence[int] | None, size: int | None) -> np.ndarray:
    if sample_ids is not None:
        return np.asarray(sample_ids, dtype=np.int64)
    if size is None:
        raise OptionError("pass the dataset size or its sample_ids")
    return np.arange(size, dtype=np.int64)


def _lookup(ids: np.ndarray, keys: np.ndarray, values: np.ndarray, default: Any) -> np.ndarray:
    """values[keys == id] for each id, `default` where the id is not in keys."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    pos = np.clip(np.searchsorted(keys, ids), 0, max(len(keys) - 1, 0))
    found = (keys[pos] == ids) if len(keys) else np.zeros(len(ids), dtype=bool)
    out = np.full(len(ids), default, dtype=values.dtype)
    out[found] = values[pos[found]]
    return out


def kept_indices(
    manifest: str | Path, size: int | None = None, *, sample_ids: Sequence[int] | None = None
) -> list[int]:
    """Dataset indices whose sample the manifest keeps (or does not mention)."""
    df, _ = artifacts.read(Path(manifest), "manifest")
    ids = _ids(sample_ids, size)
    keep = _lookup(ids, df["sample_id"].to_numpy().astype(np.int64), df["keep"].to_numpy(), True)
    return np.flatnonzero(keep).tolist()


def kept_subset(dataset: Any, manifest: str | Path, *, sample_ids: Sequence[int] | None = None) -> Any:
    """`torch.utils.data.Subset` of `dataset` without the samples the manifest prunes.

    The manifest's ids are matched to `sample_ids` (dataset index -> id), else to the dataset's
    `sample_id` column when it is a `datasets.Dataset` with one, else to the dataset indices. A
    dataset whose items have a `sample_id` column that cannot be read whole is refused without
    `sample_ids` (matching its indices would prune other samples). Its items keep their ids when
    logged through `CartoTrainer` or `IndexedDataset`: the index in `dataset` (`subset.indices[i]`),
    or the id of that index, recorded on the subset (`carto_cli.export.subsets`). `dataset` is not
    modified.
    """
    torch = require_torch()
    if sample_ids is None:
        sample_ids = _sample_id_column(dataset)
    if sample_ids is not None and len(sample_ids) != len(dataset):
        raise OptionError(
            f"kept_subset: sample_ids has {len(sample_ids)} entries but the dataset {len(dataset)}; "
            "pass one id per dataset index"
        )
    subset = torch.utils.data.Subset(dataset, kept_indices(manifest, len(dataset), sample_ids=sample_ids))
    if sample_ids is not None:
        setattr(subset, SAMPLE_IDS_ATTR, _ids(sample_ids, None))
    return subset


def _sample_id_column(dataset: Any) -> np.ndarray | None:
    """The dataset's own `sample_id` column when it can be read whole (a `datasets.Dataset`'s), else
    None; an OptionError when the first item has one (reading every item to find them all could
    cost a pass over the data: the caller passes them)."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, (list, tuple)) and "sample_id" in names:
        return np.asarray(dataset["sample_id"], dtype=np.int64)
    if len(dataset) and isinstance(dataset[0], Mapping) and "sample_id" in dataset[0]:
        raise OptionError(
            "kept_subset: the dataset's items have a `sample_id` column, which the manifest's ids refer to, but "
            "it cannot be read without loading every item; pass sample_ids= (that column, in dataset order)"
        )
    return None


def sample_weight_array(
    weights: str | Path, size: int | None = None, *, sample_ids: Sequence[int] | None = None
) -> np.ndarray:
    """The weight of each dataset index (1.0 where the file does not mention the sample)."""
    df, _ = artifacts.read(Path(weights), "weights")
    ids = _ids(sample_ids, size)
    return _lookup(ids, df["sample_id"].to_numpy().astype(np.int64), df["weight"].to_numpy(), 1.0)


def weighted_sampler(
    weights: str | Path,
    size: int | None = None,
    *,
    sample_ids: Sequence[int] | None = None,
    num_samples: int | None = None,
    replacement: bool = True,
    generator: Any = None,
) -> Any:
    """`torch.utils.data.WeightedRandomSampler` drawing each index in proportion to its weight."""
    torch = require_torch()
    w = sample_weight_array(weights, size, sample_ids=sample_ids)
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(w, dtype=torch.double),
        num_samples=num_samples or len(w),
        replacement=replacement,
        generator=generator,
    )
