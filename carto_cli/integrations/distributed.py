"""Logging under torchrun, DDP and Accelerate: one writer per rank, the padding duplicates left out.

In data-parallel training every rank runs the same loop on its own shard of each epoch and logs
with its own `CartoLogger`, which takes its rank from `torch.distributed` and writes its own parts
(`part-r<rank>-...`); `carto score` reads all ranks' parts as one log. One thing needs care: to give
every rank the same number of batches, the samplers *pad* an epoch whose length does not divide
evenly with samples repeated from its start. Those repeats are real forward passes, but logging
them would count a sample twice in the epoch (two presentations, a possible forget event between
them). Both samplers put the repeats at the end of the epoch's padded order, so one rule finds
them: **a row is a padding duplicate when its position in the padded order is >= the epoch's
length N** (the sampler's length, e.g. `len(dataset)`).

Where a rank's rows sit in the padded order (W ranks, rank r, its batch i of size B, row o of it):

| loader                                                 | position of the row  | duplicates per epoch      |
|--------------------------------------------------------|----------------------|---------------------------|
| `DistributedSampler(drop_last=False)` (torchrun, DDP, Lightning) | `r + (i*B + o)*W` | at most 1 a rank, its last |
| Accelerate's `prepare`, `even_batches=True` (default)  | `(i*W + r)*B + o`    | in the last round of batches |
| Accelerate's `prepare`, `split_batches=True`           | `i*B + r*(B/W) + o`  | in the last batch (B: whole) |

`DistributedSampler` shuffles `perm = randperm(N)`, pads `perm + perm[:padding]` (`padding` < W)
and gives rank r every W-th index from r. Accelerate's `BatchSamplerShard` (what `prepare` puts
under a map-style loader) deals whole batches round robin, batch k to rank k mod W, and completes a
short last round with indices from the start of the epoch (or, with `split_batches`, cuts every
batch into W slices and completes a short last batch the same way). `drop_last=True` and
`even_batches=False` pad nothing: every row is kept.

    from torch.utils.data import DataLoader, DistributedSampler
    from carto_cli import CartoLogger
    from carto_cli.integrations.distributed import IndexedDataset, batch_keep_mask

    data = IndexedDataset(dataset)                        # items become (sample_id, item)
    sampler = DistributedSampler(data)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    with CartoLogger("logs/") as log:                     # one writer per rank
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for i, (ids, (x, y)) in enumerate(loader):
                logits = model(x)                         # (B, T, V)
                ...
                log.record(ids, epoch=epoch, step=step, logits=logits[:, :-1], labels=y[:, 1:],
                           keep=batch_keep_mask(loader, i, len(ids)))

The same call works on the loader `accelerator.prepare` returns. The masks are CPU tensors built
from the batch's index alone (no data, no host-device sync); `CartoLogger.record(keep=...)` drops
the masked rows in its writer thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from carto_cli.errors import OptionError, require_torch
from carto_cli.export.subsets import sample_id_at


class IndexedDataset:
    """A map-style dataset whose item `i` is `(sample_id, dataset[i])`: the sample id travels with the batch.

    The default collate turns a batch of them into `(ids, batch)`, `ids` a (B,) int64 tensor, the
    sample ids to log: the index into `dataset`, stable across epochs and ranks. `sample_ids`
    (a sequence as long as the dataset) maps an index to another id, e.g. a corpus-wide row number.
    A torch `Subset` (a `kept_subset`, say; nested ones too) keeps the ids of the dataset it was cut
    from: its item `i` is logged as `indices[i]`, not `i` (`carto_cli.export.subsets`).
    `mask` (a mask file written by `carto mask`, or a `LossMask`): items that are dicts with
    `labels` laid out like their `input_ids` get -100 where the label is a memorized token (a copy;
    the dataset's item is not modified); for other items, mask the targets in the training step
    with `LossMask.mask_batch(ids, y, target_offset=...)`.
    """

    def __init__(self, dataset: Any, sample_ids: Any = None, mask: Any = None) -> None:
        self.dataset = dataset
        self.sample_ids = sample_ids
        if mask is not None and not hasattr(mask, "mask_batch"):
            from carto_cli.export.masks import LossMask

            mask = LossMask.read(mask)
        self.mask = mask
        if sample_ids is not None and len(sample_ids) != len(dataset):
            raise OptionError(
                f"IndexedDataset: sample_ids has {len(sample_ids)} entries but the dataset {len(dataset)}; "
                "pass one id per dataset index"
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        sample_id = sample_id_at(self.dataset, index) if self.sample_ids is None else int(self.sample_ids[index])
        item = self.dataset[index]
        if self.mask is not None:
            if not (isinstance(item, Mapping) and "labels" in item):
                raise OptionError("IndexedDataset(mask=): the items are not dicts with labels; mask the targets in "
                                  "the training step instead: LossMask.mask_batch(ids, y, target_offset=1) for y = "
                                  "row[1:]")
            item = {**item, "labels": self.mask.apply(sample_id, item["labels"], target_offset=0)}
        return sample_id, item


@dataclass(frozen=True)
class Sharding:
    """How a loader lays a rank's batches over the epoch's padded order (see the module docstring).

    `kind` is "none" (no padding: every row kept), "distributed" (`DistributedSampler`),
    "accelerate" (whole batches round robin) or "accelerate-split" (each batch cut into slices).
    `length` is N, `batch_size` B (the whole batch for "accelerate-split"), `skipped` the batches
    a resumed loader skips before its first (added to the batch index).
    """

    kind: str
    length: int = 0
    world: int = 1
    rank: int = 0
    batch_size: int = 0
    skipped: int = 0

    def positions(self, batch_index: int, n: int) -> Any:
        """(n,) int64: the padded-order positions of the rows of batch `batch_index` (0-based in the epoch)."""
        torch = require_torch()
        if batch_index < 0 or n < 0:
            raise OptionError(f"batch_keep_mask: batch_index ({batch_index}) and n ({n}) must be >= 0")
        rows = self.batch_size // self.world if self.kind == "accelerate-split" else self.batch_size
        if self.kind != "none" and n > rows:
            raise OptionError(
                f"batch_keep_mask: the batch has {n} rows but this rank's batches hold at most {rows}; "
                "pass n = the number of rows of the batch (len(ids))"
            )
        i = batch_index + self.skipped
        o = torch.arange(n, dtype=torch.int64)
        if self.kind == "distributed":
            return self.rank + (i * self.batch_size + o) * self.world
        if self.kind == "accelerate":
            return (i * self.world + self.rank) * self.batch_size + o
        if self.kind == "accelerate-split":
            return i * self.batch_size + self.rank * rows + o
        return o

    def keep(self, batch_index: int, n: int) -> Any:
        """(n,) bool: False for the padding duplicates among the rows of batch `batch_index`."""
        torch = require_torch()
        if self.kind == "none":
            self.positions(batch_index, n)  # the argument checks
            return torch.ones(n, dtype=torch.bool)
        return self.positions(batch_index, n) < self.length


def padding_keep_mask(sampler: Any, positions: Any) -> Any:
    """(B,) bool for a `torch.utils.data.DistributedSampler`: False where the rows at these local
    positions (0-based places in this rank's share of the epoch, i.e. `batch_index * batch_size +
    row`) are the padding duplicates the sampler repeats to even out the ranks.

    Depends on the dataset length, the number of replicas and the rank only, not on the epoch's
    shuffle: a rank's duplicate, when it has one, is always its last sample of the epoch.
    """
    torch = require_torch()
    _check_distributed_sampler(sampler)
    positions = torch.as_tensor(positions, dtype=torch.int64)
    return sampler.rank + positions * sampler.num_replicas < len(sampler.dataset)


def sharding_of(loader: Any) -> Sharding:
    """How `loader` shards and pads: a `DataLoader` over a `DistributedSampler`, a loader returned by
    Accelerate's `prepare` (or `skip_first_batches`), or any other loader (no padding known: rows kept)."""
    skipped = 0
    batch_sampler = getattr(loader, "batch_sampler", None)
    if _is_batch_sampler_shard(getattr(loader, "sampler", None)):  # Accelerate's sampler-is-batch-sampler case
        batch_sampler = loader.sampler
    while hasattr(batch_sampler, "skip_batches") and hasattr(batch_sampler, "batch_sampler"):
        skipped += int(batch_sampler.skip_batches)  # Accelerate's SkipBatchSampler (skip_first_batches on resume)
        batch_sampler = batch_sampler.batch_sampler
    skipped += int(getattr(loader, "skip_batches", 0) or 0)  # DataLoaderShard(skip_batches=...)
    if type(loader).__name__ == "DataLoaderDispatcher":
        raise OptionError(
            "batch_keep_mask: Accelerate's dispatching loader (dispatch_batches=True, the default for an "
            "IterableDataset) is not supported; use a map-style dataset or prepare(..., dispatch_batches=False)"
        )
    if _is_batch_sampler_shard(batch_sampler):
        return _accelerate_sharding(batch_sampler, skipped)
    sampler = getattr(batch_sampler, "sampler", None)
    if sampler is None:
        sampler = getattr(loader, "sampler", None)
    if _is_distributed_sampler(sampler):
        batch_size = getattr(batch_sampler, "batch_size", None)
        if not isinstance(batch_size, int):
            raise OptionError(
                "batch_keep_mask: the loader has no fixed batch size (a custom batch_sampler); "
                "use padding_keep_mask(sampler, positions) with each row's place in the rank's epoch"
            )
        return Sharding("distributed", length=len(sampler.dataset), world=int(sampler.num_replicas),
                        rank=int(sampler.rank), batch_size=batch_size, skipped=skipped)
    return Sharding("none", skipped=skipped)


def batch_keep_mask(loader: Any, batch_index: int, n: int) -> Any:
    """(n,) bool CPU tensor for batch `batch_index` (0-based, as `enumerate(loader)` counts it in the
    epoch) of `loader`, n rows: False for the padding duplicates of a `DistributedSampler` or of
    Accelerate's sharding, True elsewhere (and everywhere for a loader that does not pad)."""
    return sharding_of(loader).keep(batch_index, n)


# ------------------------------------------------------------------ recognising the samplers


def _is_distributed_sampler(sampler: Any) -> bool:
    try:
        from torch.utils.data import DistributedSampler
    except ImportError:  # pragma: no cover - torch is there whenever a DataLoader is
        return False
    return isinstance(sampler, DistributedSampler)


def _check_distributed_sampler(sampler: Any) -> None:
    if not _is_distributed_sampler(sampler):
        raise OptionError(
            f"padding_keep_mask: sampler must be a torch.utils.data.DistributedSampler, got {type(sampler).__name__}; "
            "for a whole DataLoader (also Accelerate's) use batch_keep_mask(loader, batch_index, n)"
        )


def _is_batch_sampler_shard(batch_sampler: Any) -> bool:
    """Accelerate's `BatchSamplerShard`, recognised by its attributes (Accelerate need not be installed)."""
    return all(hasattr(batch_sampler, a) for a in
               ("num_processes", "process_index", "split_batches", "even_batches", "batch_sampler"))


def _accelerate_sharding(shard: Any, skipped: int) -> Sharding:
    if not shard.even_batches or shard.drop_last or shard.num_processes == 1:
        return Sharding("none", skipped=skipped)  # nothing repeated
    inner = shard.batch_sampler
    batch_size = getattr(shard, "batch_size", None)
    sampler = getattr(inner, "sampler", None)
    if not isinstance(batch_size, int) or sampler is None:
        raise OptionError(
            "batch_keep_mask: Accelerate shards this loader's batches but its batch sampler has no fixed batch "
            "size or no sampler; build the DataLoader with batch_size= (or prepare it with even_batches=False)"
        )
    kind = "accelerate-split" if shard.split_batches else "accelerate"
    return Sharding(kind, length=len(sampler), world=int(shard.num_processes), rank=int(shard.process_index),
                    batch_size=batch_size, skipped=skipped)
