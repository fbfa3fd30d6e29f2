"""The `extractable` signal with numpy, a batch of rows at a time: the same values as the Polars
definition (`signals.extractable`), bit for bit, in bounded memory.

The Polars definition explodes every early sketch into one row per position and joins it with the
last late runs: on 4M rows that is 15 times the time of the whole forget-event scoring. Here:

1. each sample gets a slot: `sample_id - lo` when the footers show dense ids (as `dense` does),
   else its rank among the log's distinct ids (one extra pass over `sample_id`); row groups whose
   footers show only early (or only late) epochs are read only by the pass that needs them;
2. one pass over the rows with epoch >= early_epochs keeps, per slot, the runs of the last of them
   (largest step, then epoch, then runs: the definition's tie rule): (slots, 2r) integers;
3. one pass over the rows with epoch < early_epochs adds each sketched loss, in the scores' fixed
   point (`fixedpoint.SCALE`, round half to even as Polars rounds), into the slot's accumulator of
   every late run whose span holds its position: (slots, r) int64, exact in any order;
4. the value is the largest accumulator over the runs / SCALE / the number of early sketched
   presentations; null without an early and a late sketched presentation.

Rows with a null sketch are skipped (the late pass reads `hit_runs`, the early pass `top_pos` and
`top_loss`, as the definition does), as are rows with a non-finite loss when `drop_nonfinite` (as
the scores drop them). Returns None where it does not apply, and the caller then uses the Polars
definition: a batch whose lists differ in width (`carto logs bucketize` merges attempts logged
with different k) or are empty, a null inside a list, positions or runs beyond int32, or sums that
could have wrapped (a sketched loss of 2^31 nats, or billions of early presentations of a sample).

Nothing read is trusted to fit the arrays (see `carto_cli.score.reads`): every row group's epochs
and (numpy) ids are checked against its footer's statistics, the compiled loops check every slot,
and a part that disagrees, or that pyarrow cannot read, is the `damaged` error naming it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from carto_cli.io import storage
from carto_cli.io.logs import LogSet, damaged, reading, sample_id_dtype
from carto_cli.log import schema
from carto_cli.score import compiled
from carto_cli.score.fixedpoint import SCALE
from carto_cli.score.reads import applies, check_footer_range, outside_footer, read_ahead

_NO_STEP = np.iinfo(np.int64).min
_KEPT = "(kept rows)"  # `_chunks`' key for the rows of a batch that its plain columns hold
_WHERE = "(row group)"  # `_chunks`' key for (part path, row group, its footer's sample_id range)
# Rows decoded at a time: the decoded sketch lists, not the log's size, set the peak memory.
BATCH_ROWS = 262_144
_INT32 = np.iinfo(np.int32)
_LOSS_LIMIT = 2.0**31  # |sketched loss| below this: its fixed point (x SCALE) fits int64
_SUM_LIMIT = 2**63  # n_early x k x the largest |fixed-point loss| below this: no sum can have wrapped


class _Declined(Exception):
    """The kernel does not apply to this log: the caller runs the Polars definition."""


def extractable(logset: LogSet, *, early_epochs: int, drop_nonfinite: bool) -> pl.DataFrame | None:
    """sample_id -> `value` (Float64) for every sample of `logset` that has one (an early and a late
    sketched presentation); the others are left out (`local.with_signal` gives them null). None
    where the kernel does not apply (see the module)."""
    try:
        return _extractable(logset, early_epochs, drop_nonfinite)
    except _Declined:
        return None


def _extractable(logset: LogSet, early_epochs: int, drop_nonfinite: bool) -> pl.DataFrame:
    unsigned = sample_id_dtype(logset.parts) == pl.UInt64
    id_type = np.uint64 if unsigned else np.int64
    span = applies(logset)
    keys = None if span is not None else np.unique(np.concatenate(
        [chunk[schema.SAMPLE_ID].astype(id_type) for chunk in _chunks(logset, [schema.SAMPLE_ID], False)]))
    n_slots = span[1] - span[0] + 1 if span is not None else len(keys)
    base = None if span is None else id_type(span[0])

    def slots(chunk: dict, where: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The slots of the rows `where` of a batch, and those its row group's footer allows."""
        ids = chunk[schema.SAMPLE_ID][where].astype(id_type, copy=False)
        if span is None:
            return np.searchsorted(keys, ids).astype(np.int64), (0, n_slots - 1)
        footer = chunk[_WHERE][2]
        bounds = (0, n_slots - 1) if footer is None else (footer[0] - span[0], footer[1] - span[0])
        # wraps for an id outside the footer's range, never onto a slot inside it (as in `dense`)
        return (ids - base).astype(np.int64, copy=False), bounds

    loops = compiled.extract_loops()  # the same batches in C where pip built them (_extract.c)
    last_step = np.full(n_slots, _NO_STEP, dtype=np.int64)
    last_epoch = np.full(n_slots, _NO_STEP, dtype=np.int64)  # a late epoch is >= 1: also "has a late row"
    runs = None
    mark = np.zeros(n_slots, dtype=np.int64)  # finds a slot twice in one batch without sorting
    first_row = 1  # the compiled loop's marks: rows numbered from 1 over the pass (0: no mark)
    late_columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.HIT_RUNS]
    for chunk in read_ahead(_chunks(logset, late_columns, drop_nonfinite, epochs=(early_epochs, None))):
        late = chunk[schema.EPOCH] >= early_epochs
        rows = _sketched(chunk, late, [schema.HIT_RUNS])
        if rows is None:
            continue
        where, (values,) = rows
        if runs is None:
            runs = np.zeros((n_slots, values.shape[1]), dtype=np.int32)  # positions < 2^31 (checked)
        elif values.shape[1] != runs.shape[1]:
            raise _Declined  # another width than an earlier batch's
        idx, bounds = slots(chunk, where)
        step, epoch = chunk[schema.STEP][where].astype(np.int64), chunk[schema.EPOCH][where].astype(np.int64)
        values = np.ascontiguousarray(values, dtype=np.int32)
        if loops is not None:
            bad = loops.late_runs(np.ascontiguousarray(idx, dtype=np.int64), step, epoch, values, last_step,
                                  last_epoch, runs, mark, first_row, *bounds)
            _check_slots(chunk, where, idx, bounds, bad)
            first_row += len(idx)
            continue
        _check_slots(chunk, where, idx, bounds)
        mark[idx] = np.arange(len(idx))
        if (mark[idx] != np.arange(len(idx))).any():  # a sample twice in this batch: its largest row only
            order = np.lexsort((*values.T[::-1], epoch, step, idx))
            take = order[np.append(idx[order][1:] != idx[order][:-1], True)]
            idx, step, epoch, values = idx[take], step[take], epoch[take], values[take]
        later = _larger(step, epoch, values, last_step[idx], last_epoch[idx], runs[idx])
        i = idx[later]
        last_step[i], last_epoch[i], runs[i] = step[later], epoch[later], values[later]

    n_early = np.zeros(n_slots, dtype=np.int64)
    best = None
    if runs is not None:
        totals = np.zeros((n_slots, runs.shape[1] // 2), dtype=np.int64)
        most, width = 0, None  # the largest |fixed-point loss| added, the sketch's k
        if loops is None:
            starts = runs[:, 0::2].astype(np.int64)
            ends = starts + runs[:, 1::2]  # (slots, r): run j is [start, end), empty where length <= 0
        early_columns = [schema.SAMPLE_ID, schema.EPOCH, schema.TOP_POS, schema.TOP_LOSS]
        for chunk in read_ahead(_chunks(logset, early_columns, drop_nonfinite, epochs=(None, early_epochs))):
            early = chunk[schema.EPOCH] < early_epochs
            rows = _sketched(chunk, early, [schema.TOP_POS, schema.TOP_LOSS])
            if rows is None:
                continue
            where, (pos, loss) = rows
            if pos.shape != loss.shape:
                path, group, _ = chunk[_WHERE]
                raise damaged(path, f"its top_pos and top_loss lists differ in length in row group {group}")
            width = pos.shape[1] if width is None else width
            if pos.shape[1] != width:
                raise _Declined  # another width than an earlier batch's
            loss = loss.astype(np.float64)
            idx, bounds = slots(chunk, where)
            if loops is not None:
                bad, largest = loops.early_sums(np.ascontiguousarray(idx, dtype=np.int64),
                                                np.ascontiguousarray(pos, dtype=np.int32), np.ascontiguousarray(loss),
                                                runs, totals, n_early, float(SCALE), *bounds)
                _check_slots(chunk, where, idx, bounds, bad)
                if largest < 0:
                    raise _Declined  # a loss whose fixed point does not fit int64
                most = max(most, largest)
                continue
            _check_slots(chunk, where, idx, bounds)
            np.add.at(n_early, idx, 1)
            finite = np.isfinite(loss)
            if finite.any() and np.abs(loss[finite]).max() >= _LOSS_LIMIT:
                raise _Declined
            fixed = np.rint(np.where(finite, loss, 0.0) * SCALE).astype(np.int64)  # (m, k), 0 for the padding
            most = max(most, int(np.abs(fixed).max(initial=0)))
            s, e = starts[idx], ends[idx]  # (m, r): the late runs of each row's sample
            contributions = np.empty(s.shape, dtype=np.int64)
            for j in range(s.shape[1]):
                inside = (pos >= s[:, j, None]) & (pos < e[:, j, None])  # (m, k)
                contributions[:, j] = np.where(inside, fixed, 0).sum(axis=1)
            mark[idx] = np.arange(len(idx))
            if (mark[idx] == np.arange(len(idx))).all():  # each sample once in this batch
                totals[idx] += contributions
            else:
                np.add.at(totals, idx, contributions)
        if width is not None and int(n_early.max(initial=0)) * width * most >= _SUM_LIMIT:
            raise _Declined  # a sum may have wrapped: the definition's exact sums decide
        best = totals.max(axis=1)
    scored = (n_early > 0) & (last_epoch != _NO_STEP)
    value = np.zeros(n_slots)
    if best is not None:
        value[scored] = best[scored].astype(np.float64) / SCALE / n_early[scored]
    ids = np.arange(n_slots, dtype=id_type) + base if span is not None else keys
    frame = pl.DataFrame({schema.SAMPLE_ID: ids[scored], "value": value[scored]})
    return frame.with_columns(pl.col(schema.SAMPLE_ID).cast(sample_id_dtype(logset.parts)))


def _larger(step: np.ndarray, epoch: np.ndarray, values: np.ndarray, step_b: np.ndarray, epoch_b: np.ndarray,
            values_b: np.ndarray) -> np.ndarray:
    """Per row, whether (step, epoch, values) is larger than (step_b, epoch_b, values_b), the values
    (m, w) compared as lists, lexicographically: the definition's order of late presentations."""
    larger = step > step_b
    tied = step == step_b
    larger |= tied & (epoch > epoch_b)
    tied &= epoch == epoch_b
    differ = values != values_b
    first = differ.argmax(axis=1)  # the first position where they differ (0 where they do not)
    rows = np.arange(len(values))
    larger |= tied & differ.any(axis=1) & (values[rows, first] > values_b[rows, first])
    return larger


def _check_slots(chunk: dict, where: np.ndarray, idx: np.ndarray, bounds: tuple[int, int], bad: int | None = None
                 ) -> None:
    """The `damaged` error naming the batch's part when a slot of `idx` lies outside `bounds` (its row
    group's footer range): at row `bad`, as a compiled loop found it, or at any row (numpy's version)."""
    if bad is None:
        if not len(idx) or (idx.min() >= bounds[0] and idx.max() <= bounds[1]):
            return
        bad = int(np.flatnonzero((idx < bounds[0]) | (idx > bounds[1]))[0])
    elif bad < 0:
        return
    path, group, footer = chunk[_WHERE]
    sid = int(chunk[schema.SAMPLE_ID][where][bad])
    raise outside_footer(path, group, schema.SAMPLE_ID, sid, sid, footer or (0, 0))


def _sketched(chunk: dict, rows: np.ndarray, columns: list[str]) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """(row positions, the (m, W) values of each list column in `columns`) of the rows in `rows`
    where none of those lists is null; None when there is none. The values are gathered from the
    list arrays' buffers through their offsets: no list array is filtered or flattened. Declines
    (`_Declined`) where the lists of a column differ in width or are empty, hold a null, or
    (integer lists) a value beyond int32."""
    kept = chunk[_KEPT]
    where = np.flatnonzero(rows)
    batch_rows = where if kept is None else kept[where]  # the rows' positions in the Arrow arrays
    valid = np.ones(len(batch_rows), dtype=bool)
    for column in columns:
        valid &= np.asarray(chunk[column].is_valid(), dtype=bool)[batch_rows]
    where, batch_rows = where[valid], batch_rows[valid]
    if not len(where):
        return None
    return where, [_lists(chunk[column], batch_rows) for column in columns]


def _lists(array, batch_rows: np.ndarray) -> np.ndarray:
    """The (m, W) values of the lists at `batch_rows` of a list array (see `_sketched`)."""
    offsets = array.offsets.to_numpy()  # into array.values, slice or not
    starts = offsets[batch_rows]
    widths = offsets[batch_rows + 1] - starts
    if widths.min() != widths.max() or widths[0] == 0 or array.values.null_count:
        raise _Declined
    width = int(widths[0])
    values = array.values.to_numpy(zero_copy_only=False)
    if values.dtype.kind in "iu" and np.iinfo(values.dtype).max > _INT32.max and len(values) and (
            values.min() < _INT32.min or values.max() > _INT32.max):
        raise _Declined  # the loops take positions and runs as int32
    if (np.diff(offsets) == width).all():  # every list of the batch that wide (no null): one block
        block = values[offsets[0]:offsets[-1]].reshape(-1, width)
        return block if len(batch_rows) == len(block) else block[batch_rows]
    return values[starts[:, None] + np.arange(width)]


def _chunks(logset: LogSet, columns: list[str], drop_nonfinite: bool,
            epochs: tuple[int | None, int | None] = (None, None)) -> Iterator[dict]:
    """Each row group's `columns`, BATCH_ROWS rows at a time: plain columns as numpy arrays, the
    rows with a non-finite loss left out (with `drop_nonfinite`); list columns as the batch's Arrow
    arrays, whole, with `chunk[_KEPT]` the positions there of the rows kept (None: all of them), and
    `chunk[_WHERE]` the part, row group and its footer's sample_id range.
    `epochs` (lo, hi): skip the row groups whose footer statistics show no epoch in [lo, hi); the
    epochs of every batch read are checked against those statistics (a row group skipped by one
    pass is read, and checked, by the other)."""
    lo, hi = epochs
    for part in logset.parts:
        names = [c for c in columns if c in part.columns]
        wanted = [c for c in schema.SKETCH_COLUMNS if c in columns]
        if wanted and not any(c in part.columns for c in wanted):
            continue  # a part without the sketch adds no sketched row
        with reading(part.path):
            file = storage.open_parquet(part.path)
        read = names + ([schema.LOSS] if drop_nonfinite and schema.LOSS not in names else [])
        epoch_index = part.arrow_schema.names.index(schema.EPOCH)
        id_index = part.arrow_schema.names.index(schema.SAMPLE_ID)
        for rg in range(file.metadata.num_row_groups):
            group = part.footer.row_group(rg)
            stats, id_stats = group.column(epoch_index).statistics, group.column(id_index).statistics
            footer_epochs = (int(stats.min), int(stats.max)) if stats is not None and stats.has_min_max else None
            footer_ids = (int(id_stats.min), int(id_stats.max)) if id_stats is not None and id_stats.has_min_max \
                else None
            if footer_epochs is not None and (
                    (lo is not None and footer_epochs[1] < lo) or (hi is not None and footer_epochs[0] >= hi)):
                continue
            for batch in _batches(part.path, file, rg, read):
                keep = None
                if drop_nonfinite:
                    keep = np.isfinite(batch.column(schema.LOSS).to_numpy(zero_copy_only=False))
                    keep = None if keep.all() else keep
                chunk = {_KEPT: None if keep is None else np.flatnonzero(keep), _WHERE: (part.path, rg, footer_ids)}
                for name in names:
                    column = batch.column(name)
                    if name in schema.SKETCH_COLUMNS:
                        chunk[name] = column
                    else:
                        if column.null_count:
                            raise damaged(part.path, f"column '{name}' holds nulls in row group {rg}, where its "
                                                     "footer statistics count none")
                        values = column.to_numpy(zero_copy_only=False)
                        if name == schema.EPOCH:  # all of them: the row group was kept or skipped by them
                            check_footer_range(part.path, rg, name, values, footer_epochs)
                        chunk[name] = values if keep is None else values[keep]
                yield chunk


def _batches(path, file, rg: int, columns: list[str]) -> Iterator:
    """The row group's batches, BATCH_ROWS rows each, each read under `reading`."""
    batches = file.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=columns)
    while True:
        with reading(path):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch
