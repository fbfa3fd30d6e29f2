"""Sample ids through the Trainer's data pipeline: dataset -> column removal -> collator -> compute_loss.

The training dataset is wrapped (`SampleIdDataset`) so that item `i` carries its id under the
reserved key `ID_KEY`: the item's `sample_id` column when it has one, else the id of index `i` in
the dataset the user passed (`carto_cli.export.subsets.sample_id_at`: `i` itself, or through a torch
`Subset`, such as `kept_subset` returns, the index in the dataset it was cut from). The key is added
to the Trainer's signature columns, so `remove_unused_columns=True` keeps it, and the collator
wrapper (`IdCollator`) takes it out of every feature before the user's collator runs and puts the
ids back on the batch as a (B,) int64 tensor. `compute_loss` pops it before the model sees the batch.

The reserved keys are refused as dataset columns: a `__carto_keep__` column would reach
`compute_loss` as the padding mask and silently drop rows, a `__carto_sample_id__` column would be
overwritten.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from carto_cli.errors import OptionError
from carto_cli.export.subsets import sample_id_at
from carto_cli.log import schema

ID_KEY = "__carto_sample_id__"  # reserved batch key: the sample ids on their way to compute_loss
KEEP_KEY = "__carto_keep__"  # reserved batch key: (B,) bool numpy, False for the rows that are padding repeats
RESERVED_KEYS = (ID_KEY, KEEP_KEY)


def sample_id_of(item: Any, index: int | None, dataset: Any = None) -> int:
    """The item's `sample_id` column when it has one, else the id of `dataset`'s index `index`
    (the index itself unless `dataset` is a torch Subset)."""
    if isinstance(item, Mapping) and schema.SAMPLE_ID in item:
        value = item[schema.SAMPLE_ID]
        try:
            if isinstance(value, bool):
                raise TypeError
            return operator.index(value)  # ints, numpy and 0-d torch integers; not floats or strings
        except TypeError:
            raise OptionError(
                f"CartoTrainer: the training dataset's `{schema.SAMPLE_ID}` column must hold integers, got "
                f"{value!r}; map it to integers or drop the column (ids are then the dataset indices)"
            ) from None
    if index is None:
        raise OptionError(
            "CartoTrainer: an iterable training dataset has no indices; give every item an integer "
            f"`{schema.SAMPLE_ID}` column"
        )
    return int(index) if dataset is None else sample_id_at(dataset, index)


def with_id(item: Any, sample_id: int) -> Any:
    """A copy of a dict-like item with the id under ID_KEY (the item itself is left alone)."""
    if isinstance(item, Mapping):
        taken = [key for key in RESERVED_KEYS if key in item]
        if taken:
            raise OptionError(
                f"CartoTrainer: the training dataset has a column `{taken[0]}`, a name CartoTrainer reserves for "
                "what it adds to each batch; rename or drop that column"
            )
    if isinstance(item, dict):
        return {**item, ID_KEY: sample_id}
    if isinstance(item, MutableMapping):  # e.g. a BatchEncoding
        copy = type(item)(item)
        copy[ID_KEY] = sample_id
        return copy
    raise OptionError(
        f"CartoTrainer: training items must be dicts of model inputs (the Trainer's convention), got "
        f"{type(item).__name__}; return dicts such as {{'input_ids': ..., 'labels': ...}} from the dataset"
    )


class SampleIdDataset(Dataset):
    """Map-style dataset whose item `i` is `dataset[i]` plus its sample id under ID_KEY."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return with_id(item, sample_id_of(item, index, self.dataset))


class SampleIdIterableDataset(IterableDataset):
    """Iterable dataset whose items carry their `sample_id` column under ID_KEY (there is no index)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __iter__(self):
        for item in self.dataset:
            yield with_id(item, sample_id_of(item, None))

    def set_epoch(self, epoch: int) -> None:  # datasets.IterableDataset reshuffles per epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def indexed(dataset: Any) -> SampleIdDataset | SampleIdIterableDataset:
    """The dataset wrapped so that its items carry their ids (a wrapped one is returned as it is)."""
    if isinstance(dataset, (SampleIdDataset, SampleIdIterableDataset)):
        return dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return SampleIdIterableDataset(dataset)
    return SampleIdDataset(dataset)


class IdCollator:
    """Takes the ids out of the features, runs the wrapped collator, puts them on the batch (B,) int64;
    with a loss mask (`carto_cli.export.masks.LossMask`), sets the labels of its tokens to -100
    (labels laid out like the inputs, as a causal LM takes them; left padding from the attention mask)."""

    def __init__(self, collator: Any, mask: Any = None) -> None:
        self.collator = collator
        self.mask = mask

    def __call__(self, features: list[Any]) -> Any:
        ids = []
        stripped = []
        for feature in features:
            feature = type(feature)(feature)  # not the caller's object
            ids.append(feature.pop(ID_KEY))
            stripped.append(feature)
        batch = self.collator(stripped)
        batch[ID_KEY] = torch.tensor(ids, dtype=torch.int64)
        if self.mask is not None and batch.get("labels") is not None:
            from carto_cli.export.masks import left_padding

            attention = batch.get("attention_mask")
            offsets = left_padding(attention) if attention is not None else None
            batch["labels"] = self.mask.mask_batch(batch[ID_KEY], batch["labels"], target_offset=0,
                                                   row_offsets=offsets)
        return batch
