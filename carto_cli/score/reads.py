"""What the numpy kernels (`carto_cli.score.dense`, `carto_cli.score.extract`) read of a log: the
footer statistics they plan from (the id range, the epochs, the loss matrix's layout) and the row
groups' columns, the next one read on another thread while the caller works on this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pyarrow as pa

from carto_cli.io import storage
from carto_cli.io.logs import LogSet
from carto_cli.log import schema

T = TypeVar("T")


def footer_stats(logset: LogSet, column: str) -> Iterator[tuple[int, int, object]]:
    """(part index, row group, statistics of `column` or None) of every non-empty row group."""
    for i, part in enumerate(logset.parts):
        meta = part.footer
        index = part.arrow_schema.names.index(column)
        for rg in range(meta.num_row_groups):
            if meta.row_group(rg).num_rows:
                stats = meta.row_group(rg).column(index).statistics
                yield i, rg, stats if stats is not None and stats.has_min_max else None


def id_range(logset: LogSet) -> tuple[int, int] | None:
    """(lo, hi) of sample_id over every part, from footer statistics; None where any is missing."""
    lo = hi = None
    for _, _, stats in footer_stats(logset, schema.SAMPLE_ID):
        if stats is None:
            return None
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return None if lo is None else (int(lo), int(hi))


def applies(logset: LogSet, stride: int = 1) -> tuple[int, int] | None:
    """The id range when the dense kernel applies: dense ids (no more slots than rows), footer
    statistics. With `stride` n, slots are (sample_id - lo) / n: one bucket of a bucketed log."""
    span = id_range(logset)
    if span is None or (span[1] - span[0]) // stride + 1 > max(1, logset.num_rows):
        return None
    return span



def loss_matrix(logset: LogSet) -> tuple[int, int, np.dtype]:
    """The loss matrix's first epoch, rows and float type: the epochs of the footer statistics
    (from 0 if a row group has none; the matrix grows if such a row group holds a later epoch), so
    parts holding only late epochs (`--update` folding epoch 40) take a row per epoch they hold;
    float32 when every part stores the loss as float32, else float64: a stored loss is the logged one."""
    stats = [s for _, _, s in footer_stats(logset, schema.EPOCH)]
    known = [s for s in stats if s is not None]
    first = min(int(s.min) for s in known) if known and len(known) == len(stats) else 0
    last = max([first, *(int(s.max) for s in known)])
    single = all(part.arrow_schema.field(schema.LOSS).type == pa.float32() for part in logset.parts)
    return max(first, 0), last - max(first, 0) + 1, np.dtype(np.float32 if single else np.float64)


def row_groups(logset: LogSet) -> list[tuple[int, int, int | None]]:
    """(part index, row group, its one epoch or None) of every non-empty row group; the epoch comes
    from the footer statistics when they show a single epoch, so its column need not be read."""
    return [(i, rg, int(stats.min) if stats is not None and stats.min == stats.max else None)
            for i, rg, stats in footer_stats(logset, schema.EPOCH)]


def kernel_columns(kernel, with_epoch: bool, with_step: bool) -> list[str]:
    """What the kernel reads: ids, epochs (unless known), losses, the correctness rule's column, and
    steps for the full state."""
    names = [schema.SAMPLE_ID, schema.EPOCH, schema.LOSS, kernel.rule.column, schema.STEP]
    return list(dict.fromkeys(n for n in names if (with_epoch or n != schema.EPOCH)
                              and (with_step or n != schema.STEP)))


def correct_of(kernel, values: np.ndarray) -> np.ndarray:
    """The rule applied to its column (NaN is never correct, as in `CorrectnessRule.expr`)."""
    rule = kernel.rule
    if rule.source == "log":
        return values.astype(bool)
    return values >= rule.threshold if rule.source == "acc" else values < rule.threshold


def read(logset: LogSet, groups: list, kernel, unsigned: bool, full: bool) -> Iterator[tuple]:
    """(ids, epoch array or the row group's one epoch, loss, rule column, steps or None), one row
    group at a time."""
    files: dict[int, object] = {}
    for i, rg, epoch in groups:
        if i not in files:
            files = {i: storage.open_parquet(logset.parts[i].path)}  # parts are read in order: one open
        table = files[i].read_row_group(rg, columns=kernel_columns(kernel, epoch is None, full), use_threads=True)
        yield (
            table.column(schema.SAMPLE_ID).to_numpy().astype(np.uint64 if unsigned else np.int64, copy=False),
            table.column(schema.EPOCH).to_numpy().astype(np.int64, copy=False) if epoch is None else epoch,
            table.column(schema.LOSS).to_numpy(),
            table.column(kernel.rule.column).to_numpy(),
            table.column(schema.STEP).to_numpy().astype(np.int64, copy=False) if full else None,
        )



_DONE = object()


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """`items`, each next one made on another thread while the caller works on this one (pyarrow's
    reads, numpy and the compiled loops release the GIL); a caller that stops early waits for the
    one in flight."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="carto-read") as reader:
        ahead = reader.submit(next, items, _DONE)
        while (item := ahead.result()) is not _DONE:
            ahead = reader.submit(next, items, _DONE)
            yield item
