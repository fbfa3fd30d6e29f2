"""What the numpy kernels (`carto_cli.score.dense`, `carto_cli.score.extract`) read of a log: the
footer statistics they plan from (the id range, the epochs, the loss matrix's layout) and the row
groups' columns, the next one read on another thread while the caller works on this one.

The footers can disagree with the pages (a damaged disk or copy, a patched file, a buggy writer),
and the kernels index arrays by what the pages hold, so nothing read is trusted to match the plan:
- every sample_id is checked against its row group's footer range where it becomes an array
  index (`compiled.add_rows` and the `_extract.c` loops: one compare per row; numpy: min and
  max), and an id outside it is the `damaged` error naming the part (`outside_footer`);
- the epochs and steps of each row group the dense kernel reads are checked against its footer
  (`read`: their min and max), as the plan rests on them (one epoch per row group: the packed
  layout; step ranges: the order of presentations); so are the epochs of every row group
  `carto_cli.score.extract` reads (`check_footer_range`: it skipped row groups by them);
- a required column must hold no null (the footer said so at open);
- whatever pyarrow raises reading a part (a page that fails to decode or its checksum) is the
  `damaged` error naming it (`carto_cli.io.logs.reading`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from carto_cli.errors import UnreadablePartError
from carto_cli.io import storage
from carto_cli.io.logs import LogSet, damaged, reading
from carto_cli.log import schema

T = TypeVar("T")


class RowGroup(NamedTuple):
    """One non-empty row group, as its footer describes it."""

    part: int  # index in the log set's parts
    group: int
    epoch: int | None  # the one epoch of every row, where the statistics show a single one
    epochs: tuple[int, int] | None  # (min, max) epoch, None without statistics
    ids: tuple[int, int] | None  # (min, max) sample_id
    steps: tuple[int, int] | None  # (min, max) step


class Rows(NamedTuple):
    """The columns the dense kernel reads of one row group."""

    where: RowGroup
    ids: np.ndarray  # int64, or uint64 for a log of unsigned ids
    epoch: np.ndarray | int  # per row, or the row group's one epoch (checked against the column)
    loss: np.ndarray  # float32 or float64
    rule_values: np.ndarray  # the correctness rule's column
    step: np.ndarray | None  # with the full state only (else read only to be checked)


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


def row_groups(logset: LogSet) -> list[RowGroup]:
    """Every non-empty row group, with its one epoch where the footer statistics show a single
    epoch (so that the kernel can take the packed layout), and its sample_id and step ranges."""
    ids, steps = ({(i, rg): _bounds(stats) for i, rg, stats in footer_stats(logset, column)}
                  for column in (schema.SAMPLE_ID, schema.STEP))
    return [RowGroup(i, rg, int(stats.min) if stats is not None and stats.min == stats.max else None, _bounds(stats),
                     ids[i, rg], steps[i, rg])
            for i, rg, stats in footer_stats(logset, schema.EPOCH)]


def _bounds(stats) -> tuple[int, int] | None:
    return None if stats is None else (int(stats.min), int(stats.max))


def kernel_columns(kernel) -> list[str]:
    """What the dense kernel reads: ids, epochs, losses, the correctness rule's column, and steps
    (for the full state; else only to check them against the footer, whose step ranges say which
    presentation comes first)."""
    return list(dict.fromkeys([schema.SAMPLE_ID, schema.EPOCH, schema.LOSS, kernel.rule.column, schema.STEP]))


def correct_of(kernel, values: np.ndarray) -> np.ndarray:
    """The rule applied to its column (NaN is never correct, as in `CorrectnessRule.expr`)."""
    rule = kernel.rule
    if rule.source == "log":
        return values.astype(bool)
    return values >= rule.threshold if rule.source == "acc" else values < rule.threshold


def read(logset: LogSet, groups: list[RowGroup], kernel, unsigned: bool, full: bool) -> Iterator[Rows]:
    """The columns of each row group in `groups`, in order; the epoch as the row group's one epoch
    where its footer shows one. Its epochs and steps are checked against its footer (the plan's
    packed layout and presentation order rest on those); a part that cannot be read, or that holds
    a null or an epoch or step its footer denies, is the `damaged` error naming it."""
    files: dict[int, object] = {}
    for where in groups:
        path = logset.parts[where.part].path
        with reading(path):
            if where.part not in files:  # parts are read in order: one open
                files = {where.part: storage.open_parquet(path)}
            table = files[where.part].read_row_group(where.group, columns=kernel_columns(kernel), use_threads=True)
        for name in table.column_names:
            if name in schema.REQUIRED_COLUMNS and table.column(name).null_count:
                raise damaged(path, f"column '{name}' holds nulls in row group {where.group}, where its footer "
                                    "statistics count none")
        epochs = table.column(schema.EPOCH)
        for name, footer in ((schema.EPOCH, where.epochs), (schema.STEP, where.steps)):
            bounds = pc.min_max(table.column(name)) if footer is not None else None
            if bounds is not None and (bounds["min"].as_py() < footer[0] or bounds["max"].as_py() > footer[1]):
                raise outside_footer(path, where.group, name, bounds["min"].as_py(), bounds["max"].as_py(), footer)
        yield Rows(
            where,
            table.column(schema.SAMPLE_ID).to_numpy().astype(np.uint64 if unsigned else np.int64, copy=False),
            epochs.to_numpy().astype(np.int64, copy=False) if where.epoch is None else where.epoch,
            _float_loss(table.column(schema.LOSS).to_numpy()),
            table.column(kernel.rule.column).to_numpy(),
            table.column(schema.STEP).to_numpy().astype(np.int64, copy=False) if full else None,
        )


def _float_loss(loss: np.ndarray) -> np.ndarray:
    """The loss as the kernels take it: float32 or float64 (a float16 column as float64)."""
    return loss if loss.dtype in (np.float32, np.float64) else loss.astype(np.float64)


def outside_footer(path, group: int, column: str, low: int, high: int, footer: tuple[int, int]
                   ) -> UnreadablePartError:
    """The error for a row group whose `column` holds values in [low, high], outside the range
    its footer statistics give: the pages or the footer are damaged (or were written wrong)."""
    held = f"{low}" if low == high else f"{low}..{high}"
    return damaged(path, f"row group {group} holds {column} {held}, outside the range its footer statistics "
                         f"give ({footer[0]}..{footer[1]})")


def check_footer_range(path, group: int, column: str, values: np.ndarray, footer: tuple[int, int] | None) -> None:
    """`outside_footer` when any of `values` (one row group's, or a batch of it) lies outside the
    footer's range of `column` (none where the footer has no statistics)."""
    if footer is None or not len(values):
        return
    low, high = values.min(), values.max()
    if low < footer[0] or high > footer[1]:
        raise outside_footer(path, group, column, int(low), int(high), footer)



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
