"""The repeats that pad an epoch under several processes: a keep mask on every training batch.

To give every rank the same number of batches, Accelerate's prepared loader completes a short last
round of the epoch with samples from its start (`even_batches`, the default). Those rows are trained
on but not logged: every batch the Trainer fetches (`get_batch_samples`) gets a keep mask under the
reserved key `KEEP_KEY`, built on the CPU from the batch's index in the epoch and the loader being
iterated (its `skip_first_batches` copy on a resume, whose skipped batches count), by the rule of
`carto_cli.integrations.distributed`; for Accelerate's dispatching loader (iterable datasets) from
the loader's own end-of-epoch count. `compute_loss` pops it and passes it to `record(keep=...)`.
One process, or `dataloader_drop_last=True`: no mask, no cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import numpy as np

from carto_cli.errors import OptionError
from carto_cli.integrations.distributed import sharding_of
from carto_cli.integrations.hf.ids import ID_KEY, KEEP_KEY, SampleIdDataset, SampleIdIterableDataset


def dispatched_keep(rank: int, rows: int, *, last: bool, remainder: int) -> np.ndarray:
    """(rows,) bool for a batch that Accelerate's `DataLoaderDispatcher` gives rank `rank`: False for
    the padding repeats.

    Rank 0 loads each round (one batch per rank, or one whole batch with `split_batches`) and rank r
    gets rows `[r*rows, (r+1)*rows)` of it. When the epoch's last round has `remainder` rows and that
    does not divide among the ranks, the dispatcher first appends the first rows of the epoch: in the
    last batch (`last`, the loader's `end_of_dataloader`, `remainder` its `remainder`) the rows at
    positions >= remainder are repeats. Every other batch is kept whole.
    """
    if not last:
        return np.ones(rows, dtype=bool)
    return rank * rows + np.arange(rows) < remainder


def padding_rule(loader: Any) -> Callable[[int, int], np.ndarray] | None:
    """How to tell the padding repeats in the batches of one iteration of `loader`: the training loader
    the Trainer iterates (Accelerate's prepared loader, or its `skip_first_batches` copy on a resume).

    None when the loader repeats nothing (one process, `drop_last`, `even_batches=False`). Else a
    function of (the batch's 0-based index in this iteration, its rows) -> (rows,) bool numpy, False
    for the repeats: the rule of `carto_cli.integrations.distributed` (skipped batches counted), or for
    the dispatcher (iterable datasets) `dispatched_keep`, which reads the loader's end-of-epoch state
    and so must be called right after the batch is fetched. Loaders that repeat samples carto cannot
    tell apart are one-line errors.
    """
    if type(loader).__name__ == "DataLoaderDispatcher":
        rank = int(loader.state.process_index)
        return lambda index, rows: dispatched_keep(rank, rows, last=bool(loader.end_of_dataloader),
                                                   remainder=int(loader.remainder))
    dataset = getattr(loader, "dataset", None)
    if _is_iterable_shard(dataset) and dataset.num_processes > 1 and not dataset.drop_last:
        raise OptionError(
            "CartoTrainer: an iterable training dataset sharded on every process (accelerator_config "
            "dispatch_batches=False) completes its last batches with repeats carto cannot tell apart; keep "
            "dispatch_batches at its default, set dataloader_drop_last=True, or use a map-style dataset"
        )
    for batch_sampler in _batch_samplers(loader):
        if _pads_rebalanced_tail(batch_sampler):
            tail, groups = batch_sampler.remainder, batch_sampler.dp_size * batch_sampler.grad_accum
            raise OptionError(
                f"CartoTrainer: train_sampling_strategy='batch_rebalance' fills the epoch's last {tail} samples up "
                f"to {groups} with repeats that carto cannot tell apart once sorted by length; set "
                "dataloader_drop_last=True or another train_sampling_strategy"
            )
    sharding = sharding_of(loader)
    if sharding.kind == "none":
        return None
    return lambda index, rows: sharding.keep(index, rows).numpy()


def _is_iterable_shard(dataset: Any) -> bool:
    """Accelerate's `IterableDatasetShard`, recognised by its attributes."""
    return all(hasattr(dataset, a) for a in ("dataset", "num_processes", "process_index", "drop_last", "split_batches"))


def _batch_samplers(loader: Any) -> Iterator[Any]:
    """The loader's batch sampler and those it wraps (Accelerate's SkipBatchSampler, BatchSamplerShard)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for _ in range(8):
        if batch_sampler is None:
            return
        yield batch_sampler
        batch_sampler = getattr(batch_sampler, "batch_sampler", None)


def _pads_rebalanced_tail(batch_sampler: Any) -> bool:
    """transformers' `BatchRebalanceSampler` with drop_last=False repeats samples when the epoch's tail
    has fewer samples than (rank, micro-batch) groups."""
    if not all(hasattr(batch_sampler, a) for a in ("has_tail", "remainder", "dp_size", "grad_accum")):
        return False
    return bool(batch_sampler.has_tail) and batch_sampler.remainder < batch_sampler.dp_size * batch_sampler.grad_accum


def _carries_ids(loader: Any) -> bool:
    """Whether `loader` iterates the training dataset CartoTrainer wrapped (directly or sharded)."""
    dataset = getattr(loader, "dataset", None)
    if _is_iterable_shard(dataset):
        dataset = dataset.dataset
    return isinstance(dataset, (SampleIdDataset, SampleIdIterableDataset))


class PaddingMasks:
    """One epoch's iterator of training batches, as the Trainer fetches them, each with its keep mask.

    Counts the batches (their index in this iteration of the loader, whatever the gradient
    accumulation) and puts `rule(index, rows)` on every batch that carries sample ids, under
    KEEP_KEY; no mask when the loader repeats nothing. The loader is found when the first batch is
    fetched: Accelerate registers the loader it iterates in `gradient_state.active_dataloader`.
    """

    def __init__(self, iterator: Iterator[Any], gradient_state: Any, processes: int) -> None:
        self.iterator = iterator
        self.gradient_state = gradient_state
        self.processes = processes
        self.index = 0  # batches fetched so far in this iteration
        self.rule: Callable[[int, int], np.ndarray] | None = None
        self.found = False

    def __iter__(self) -> PaddingMasks:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        if isinstance(batch, MutableMapping) and ID_KEY in batch:
            if not self.found:
                self.rule = padding_rule(self._loader())
                self.found = True
            if self.rule is not None:
                batch[KEEP_KEY] = self.rule(self.index, int(batch[ID_KEY].shape[0]))
        self.index += 1
        return batch

    def _loader(self) -> Any:
        loader = self.gradient_state.active_dataloader
        if not _carries_ids(loader):
            raise OptionError(
                f"CartoTrainer: with {self.processes} processes carto leaves out the repeats that pad the epoch, "
                "found from the DataLoader that Accelerate prepares in get_train_dataloader, but the training "
                "batches come from another loader; return the Trainer's loader or set dataloader_drop_last=True"
            )
        return loader
