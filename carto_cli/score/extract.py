"""The `extractable` signal a batch of rows at a time: the same values as the Polars definition
(`signals.extractable`), bit for bit, in bounded memory.

The Polars definition explodes every early sketch into one row per position and joins it with the
last late runs: on 4M rows that is 15 times the time of the whole forget-event scoring. Here:

1. each sample gets a slot: `sample_id - lo` when the footers show dense ids (as `dense` does),
   else its rank among the log's distinct ids (one extra pass over `sample_id`); row groups whose
   footers show only early (or only late) epochs are read only by the pass that needs them;
2. one pass over the rows with epoch >= early_epochs keeps, per slot, the runs of the last of them
   (largest step, then epoch, then runs: the definition's tie rule): (slots, 2r) integers, uint16
   where the log's hit_runs are (as the shim writes them), else int32;
3. one pass over the rows with epoch < early_epochs adds each sketched loss, in the scores' fixed
   point (`fixedpoint.SCALE`, round half to even as Polars rounds), into the slot's accumulator of
   every late run whose span holds its position: (slots, r) integers, exact in any order. The
   compiled loops keep both passes' fields of a slot in one 64-byte record (the shim's sketch;
   `extract_loops.Compiled`): the late pass's last step and epoch in the bytes the early pass then
   uses for its 48-bit totals;
4. the value is the largest accumulator over the runs / SCALE / the number of early sketched
   presentations; null without an early and a late sketched presentation.

The compiled loops (`_extract.c`) read each batch's list columns where pyarrow decoded them (their
offsets and values, in the log's own types: float16 losses, uint16 positions), so nothing is
gathered, filtered or widened per batch; numpy's version (no compiler) gathers them first.

Rows with a null sketch are skipped (the late pass reads `hit_runs`, the early pass `top_pos` and
`top_loss`, as the definition does), as are rows with a non-finite loss when `drop_nonfinite` (as
the scores drop them). Returns None where it does not apply, and the caller then uses the Polars
definition: lists of another width than the pass's first (`carto logs bucketize` merges attempts
logged with different k) or empty, a null inside a list, positions or runs beyond int32 (or an
epoch), more than 65,535 early presentations of a sample, or sums that could have left 48 bits
(n_early x k x the largest |sketched loss| of 32,768 nats or more).

Nothing read is trusted to fit the arrays (see `carto_cli.score.reads`): every row group's epochs
and (numpy) ids are checked against its footer's statistics, the compiled loops check every slot,
and a part that disagrees, or that pyarrow cannot read, is the `damaged` error naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from carto_cli.io import storage
from carto_cli.io.logs import LogSet, damaged, reading, sample_id_dtype
from carto_cli.log import schema
from carto_cli.score import compiled, extract_loops
from carto_cli.score.reads import applies, check_footer_range, outside_footer, read_ahead

# Rows decoded at a time: the decoded sketch lists, not the log's size, set the peak memory.
BATCH_ROWS = 262_144
# n_early x k x the largest |fixed-point loss| below this: no sum can have wrapped (the compiled
# loops keep 48-bit sums; 2^47 fixed-point units are 32,768 nats)
_SUM_LIMIT = 2**47
_OK, _LISTS_DIFFER = extract_loops._OK, extract_loops._LISTS_DIFFER  # the loops' statuses
ALL = extract_loops.ALL  # `_Batch.rows`: every row of the batch


class Declined(Exception):
    """The kernel does not apply to this log: the caller runs the Polars definition."""


@dataclass
class Extracted:
    """The signal of every sample slot: `values` (Float64) where `valid`; slot i holds the sample
    `first_id + i` (dense ids) or `keys[i]`."""

    values: np.ndarray
    valid: np.ndarray
    first_id: int | None
    keys: np.ndarray | None
    dtype: pl.DataType  # the log's sample_id dtype

    def frame(self) -> pl.DataFrame:
        """sample_id -> value of the samples that have one (`local.with_signal` gives the others null)."""
        if self.keys is not None:
            ids = self.keys
        else:
            id_type = np.uint64 if self.dtype == pl.UInt64 else np.int64
            ids = np.arange(len(self.values), dtype=id_type) + id_type(self.first_id)
        frame = pl.DataFrame({schema.SAMPLE_ID: ids[self.valid], "value": self.values[self.valid]})
        return frame.with_columns(pl.col(schema.SAMPLE_ID).cast(self.dtype))


def extractable(logset: LogSet, *, early_epochs: int, drop_nonfinite: bool, by_slot: bool = False
                ) -> pl.DataFrame | Extracted | None:
    """sample_id -> `value` (Float64) for every sample of `logset` that has one (an early and a late
    sketched presentation); the others are left out (`local.with_signal` gives them null). With
    `by_slot`, the `Extracted` arrays instead (what `carto_cli.score.streamed` takes). None where the
    kernel does not apply (see the module)."""
    try:
        found = _extractable(logset, early_epochs, drop_nonfinite)
    except Declined:
        return None
    return found if by_slot else found.frame()


class _Slots:
    """Sample ids to slots: `id - lo` for dense ids (the footers' range), else the rank among the
    log's distinct ids (`keys`, one pass over sample_id)."""

    def __init__(self, logset: LogSet) -> None:
        self.dtype = sample_id_dtype(logset.parts)
        self.id_type = np.uint64 if self.dtype == pl.UInt64 else np.int64
        self.span = applies(logset)
        self.keys = None
        if self.span is None:
            self.keys = np.unique(np.concatenate([
                batch.plain(schema.SAMPLE_ID).astype(self.id_type)
                for batch in _batches(logset, [schema.SAMPLE_ID], False)]))
        self.n = self.span[1] - self.span[0] + 1 if self.span is not None else len(self.keys)

    def at(self, batch: _Batch, where: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The slots of the rows `where` of a batch (int64), and those its row group's footer allows."""
        return self.of(batch.plain(schema.SAMPLE_ID)[where], batch.footer_ids)

    def of(self, ids: np.ndarray, footer: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
        """The slots of `ids` (int64), and those a row group's footer range `footer` allows."""
        ids = ids.astype(self.id_type, copy=False)
        if self.span is None:
            return np.searchsorted(self.keys, ids).astype(np.int64), (0, self.n - 1)
        lo = self.span[0]
        bounds = (0, self.n - 1) if footer is None else (footer[0] - lo, footer[1] - lo)
        # wraps for an id outside the footer's range, never onto a slot inside it (as in `dense`)
        return (ids - self.id_type(lo)).astype(np.int64, copy=False), bounds


def _extractable(logset: LogSet, early_epochs: int, drop_nonfinite: bool) -> Extracted:
    slots = _Slots(logset)
    loops = compiled.extract_loops()  # the same batches in C where pip built them (_extract.c)
    runs_dtype = _runs_dtype(logset)
    state = extract_loops.Numpy(slots.n, runs_dtype) if loops is None else extract_loops.Compiled(
        loops, slots.n, runs_dtype)
    bound = None
    if _late_pass(logset, slots, state, early_epochs, drop_nonfinite):
        state.settle()
        bound = _early_pass(logset, slots, state, early_epochs, drop_nonfinite)
    values, valid, most_early = state.values()
    if bound is not None and most_early * bound[0] * bound[1] >= _SUM_LIMIT:
        raise Declined  # a sum may have wrapped: the definition's exact sums decide
    first_id = None if slots.span is None else slots.span[0]
    return Extracted(values, valid, first_id, slots.keys, slots.dtype)


def _runs_dtype(logset: LogSet) -> np.dtype:
    """uint16 runs where every part stores hit_runs as 8- or 16-bit unsigned integers (the shim's
    uint16), else int32 (the loops decline beyond it)."""
    narrow = all(pa.types.is_uint8(t) or pa.types.is_uint16(t) for t in (
        part.arrow_schema.field(schema.HIT_RUNS).type.value_type
        for part in logset.parts if schema.HIT_RUNS in part.arrow_schema.names))
    return np.dtype(np.uint16 if narrow else np.int32)


def _late_pass(logset: LogSet, slots: _Slots, state, early_epochs: int, drop_nonfinite: bool) -> bool:
    """Each slot's runs of its last late sketched presentation, into `state`; whether any row has a
    late sketch."""
    width = None
    columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.HIT_RUNS]

    def superseded(group: _Group, file) -> bool:
        """Whether every sample of a row group already has a late sketched presentation at a later
        step than any of the group's (its footer's largest): then none of its rows can be a last
        presentation, and its hit runs need no decoding. Asked first on the reader thread, before
        the group is decoded, of a state the main thread is still adding to (a slot's last step
        only grows, so a yes stays true), and again by the main thread at the group's first batch
        (`group.slots`, the group's slots, read here)."""
        if group.steps is None:
            return False
        with reading(group.part.path):
            ids = file.read_row_group(group.index, columns=[schema.SAMPLE_ID]).column(0)
        if ids.null_count:
            return False  # the pass reports it
        group.slots = slots.of(ids.to_numpy(), group.ids)
        return state.started() and state.superseded(*group.slots, group.steps[1])

    # newest first: with one presentation per sample and epoch, the last epoch's rows are read and
    # every earlier late epoch's row groups are superseded (their sample ids alone are read)
    batches = _batches(logset, columns, drop_nonfinite, epochs=(early_epochs, None), newest_first=True,
                       skip=superseded)
    for batch in read_ahead(batches):
        group = batch.origin
        if batch.first and group.slots is not None and state.started() and state.superseded(*group.slots,
                                                                                              group.steps[1]):
            group.skip = True  # the rows the reader thread added since: the rest is left unread
            continue
        where = batch.rows(lambda epoch: epoch >= early_epochs, [schema.HIT_RUNS], drop_nonfinite)
        if where is not ALL and not len(where):
            continue
        lists = batch.column(schema.HIT_RUNS)
        found = _width(lists, where)
        width = found if width is None else width
        if found != width or found % 2 or found > extract_loops.MAX_WIDTH:
            raise Declined  # another width than an earlier batch's, or not (start, length) pairs
        idx, bounds = slots.at(batch, where)
        if isinstance(state, extract_loops.Numpy):
            _check_slots(batch, where, idx, bounds)
        step = np.ascontiguousarray(batch.plain(schema.STEP)[where], dtype=np.int64)
        epoch = np.ascontiguousarray(batch.plain(schema.EPOCH)[where], dtype=np.int64)
        bad, status = state.late(idx, where, lists, step, epoch, width, bounds)
        _check_slots(batch, where, idx, bounds, bad)
        _check_status(batch, status)
    return width is not None


def _early_pass(logset: LogSet, slots: _Slots, state, early_epochs: int, drop_nonfinite: bool
                ) -> tuple[int, int] | None:
    """Each early sketched loss into its slot's totals per late run, in `state`; (the sketch's k,
    the largest |fixed-point loss| added), or None where no row has an early sketch."""
    most, width = 0, None
    columns = [schema.SAMPLE_ID, schema.EPOCH, schema.TOP_POS, schema.TOP_LOSS]
    for batch in read_ahead(_batches(logset, columns, drop_nonfinite, epochs=(None, early_epochs))):
        where = batch.rows(lambda epoch: epoch < early_epochs, [schema.TOP_POS, schema.TOP_LOSS], drop_nonfinite)
        if where is not ALL and not len(where):
            continue
        pos, loss = batch.column(schema.TOP_POS), batch.column(schema.TOP_LOSS)
        k = _width(pos, where)
        width = k if width is None else width
        if k != width or loss.values.null_count:
            raise Declined  # another width than an earlier batch's, or a null inside a list
        idx, bounds = slots.at(batch, where)
        if isinstance(state, extract_loops.Numpy):
            _check_slots(batch, where, idx, bounds)
        bad, largest, status = state.early(idx, where, pos, loss, k, bounds)
        _check_slots(batch, where, idx, bounds, bad)
        _check_status(batch, status)
        if largest < 0:
            raise Declined  # a loss whose fixed point does not fit int64
        most = max(most, largest)
    return None if width is None else (width, most)


def _width(lists: pa.Array, where: np.ndarray | slice) -> int:
    """The length of the list at the first of the rows `where` (the loops check every other row
    against it); declines where it is 0 or a list holds a null."""
    offsets, first = lists.offsets, 0 if where is ALL else int(where[0])
    width = offsets[first + 1].as_py() - offsets[first].as_py()
    if width == 0 or lists.values.null_count:
        raise Declined
    return width


def _check_status(batch: _Batch, status: int) -> None:
    """Decline, or the `damaged` error, for a compiled loop's status."""
    if status == _LISTS_DIFFER:
        raise damaged(batch.path, f"its top_pos and top_loss lists differ in length in row group {batch.group}")
    if status != _OK:
        raise Declined


def _check_slots(batch: _Batch, where: np.ndarray, idx: np.ndarray, bounds: tuple[int, int],
                 bad: int | None = None) -> None:
    """The `damaged` error naming the batch's part when a slot of `idx` lies outside `bounds` (its row
    group's footer range): at row `bad`, as a compiled loop found it, or at any row (numpy's version)."""
    if bad is None:
        if not len(idx) or (idx.min() >= bounds[0] and idx.max() <= bounds[1]):
            return
        bad = int(np.flatnonzero((idx < bounds[0]) | (idx > bounds[1]))[0])
    elif bad < 0:
        return
    sid = int(batch.plain(schema.SAMPLE_ID)[where][bad])
    raise outside_footer(batch.path, batch.group, schema.SAMPLE_ID, sid, sid, batch.footer_ids or (0, 0))


@dataclass
class _Batch:
    """BATCH_ROWS rows of one row group: its Arrow columns, and where it comes from."""

    path: object
    group: int
    footer_ids: tuple[int, int] | None
    footer_epochs: tuple[int, int] | None
    data: pa.RecordBatch
    origin: _Group | None = None
    first: bool = False  # the first batch of its row group

    def column(self, name: str) -> pa.Array:
        return self.data.column(name)

    def plain(self, name: str) -> np.ndarray:
        """A plain column as numpy (no copy where its type allows); a null is the `damaged` error
        (its footer counts none: the reader checked)."""
        column = self.data.column(name)
        if column.null_count:
            raise damaged(self.path, f"column '{name}' holds nulls in row group {self.group}, where its footer "
                                     "statistics count none")
        return column.to_numpy(zero_copy_only=False)

    def rows(self, keep_epoch, lists: list[str], drop_nonfinite: bool) -> np.ndarray | slice:
        """The positions of the rows whose epoch `keep_epoch` keeps, whose `lists` are not null,
        and (with `drop_nonfinite`) whose loss is finite, or `ALL` where that is every row (no
        array gathered); the epochs are checked against the footer."""
        epoch = self.plain(schema.EPOCH)
        check_footer_range(self.path, self.group, schema.EPOCH, epoch, self.footer_epochs)
        keep = keep_epoch(epoch)
        if drop_nonfinite:
            keep &= np.isfinite(self.plain(schema.LOSS))
        for name in lists:
            column = self.data.column(name)
            if column.null_count:
                keep &= np.asarray(column.is_valid(), dtype=bool)
        return ALL if keep.all() else np.flatnonzero(keep)


@dataclass
class _Group:
    """A row group to read, with its footer's ranges (None without statistics)."""

    part: object  # its `LogPart`
    index: int
    ids: tuple[int, int] | None
    epochs: tuple[int, int] | None
    steps: tuple[int, int] | None
    slots: tuple | None = None  # its rows' (slots, bounds), where a pass read them (`_late_pass`)
    skip: bool = False  # set by the pass: read no more of it


def _groups(logset: LogSet, columns: list[str], epochs: tuple[int | None, int | None]) -> list[_Group]:
    """The row groups of the parts that hold `columns`' sketch, without those whose footer
    statistics show no epoch in `epochs` (lo, hi) (a row group skipped by one pass is read, and
    checked, by the other)."""
    lo, hi = epochs
    found = []
    wanted = [c for c in schema.SKETCH_COLUMNS if c in columns]
    for part in logset.parts:
        if any(c not in part.columns for c in wanted):
            continue  # no sketched row there (the shim logs all three sketch columns or none)
        names = part.arrow_schema.names
        at = {name: names.index(name) for name in (schema.EPOCH, schema.SAMPLE_ID, schema.STEP)}
        for rg in range(part.footer.num_row_groups):
            group = part.footer.row_group(rg)
            if not group.num_rows:
                continue
            footer = {name: _range(group.column(i).statistics) for name, i in at.items()}
            held = footer[schema.EPOCH]
            if held is not None and ((lo is not None and held[1] < lo) or (hi is not None and held[0] >= hi)):
                continue
            found.append(_Group(part, rg, footer[schema.SAMPLE_ID], held, footer[schema.STEP]))
    return found


def _batches(logset: LogSet, columns: list[str], drop_nonfinite: bool,
             epochs: tuple[int | None, int | None] = (None, None), *, newest_first: bool = False,
             skip=None) -> Iterator[_Batch]:
    """Each row group's `columns` (and the loss with `drop_nonfinite`), BATCH_ROWS rows at a time,
    of the row groups `_groups` keeps; with `newest_first`, in descending order of their footers'
    largest step (those without statistics first). `skip(group, file)`: True to leave a row group
    unread; a group whose `skip` the caller sets is read no further."""
    groups = _groups(logset, columns, epochs)
    if newest_first:
        groups.sort(key=lambda g: float("inf") if g.steps is None else g.steps[1], reverse=True)
    opened = (None, None)
    for group in groups:
        part = group.part
        if opened[0] is not part:  # one part open at a time (a log may have thousands)
            with reading(part.path):
                opened = (part, storage.open_parquet(part.path))
        file = opened[1]
        if skip is not None and skip(group, file):
            continue
        names = [c for c in columns if c in part.columns]
        read = names + ([schema.LOSS] if drop_nonfinite and schema.LOSS not in names else [])
        batches = file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group.index], columns=read)
        first = True
        while not group.skip:
            with reading(part.path):
                data = next(batches, None)
            if data is None:
                break
            yield _Batch(part.path, group.index, group.ids, group.epochs, data, group, first)
            first = False


def _range(stats) -> tuple[int, int] | None:
    return (int(stats.min), int(stats.max)) if stats is not None and stats.has_min_max else None
