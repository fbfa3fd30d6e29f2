"""The `extractable` signal with numpy, a batch of rows at a time: the same values as the Polars
definition (`signals.extractable`), bit for bit, in bounded memory.

The Polars definition explodes every early sketch into one row per position and joins it with the
last late runs: on 4M rows that is 15 times the time of the whole forget-event scoring. Here:

1. each sample gets a slot: `sample_id - lo` when the footers show dense ids (as `dense` does),
   else its rank among the log's distinct ids (one extra pass over `sample_id`); row groups whose
   footers show only early (or only late) epochs are read only by the pass that needs them;
2. one pass over the rows with epoch >= early_epochs keeps, per slot, the runs of the last of them
   (largest step, then epoch): (slots, 2r) integers;
3. one pass over the rows with epoch < early_epochs adds each sketched loss, in the scores' fixed
   point (`fixedpoint.SCALE`, round half to even as Polars rounds), into the slot's accumulator of
   every late run whose span holds its position: (slots, r) int64, exact in any order;
4. the value is the largest accumulator over the runs / SCALE / the number of early sketched
   presentations; null without an early and a late sketched presentation.

Rows with a null sketch are skipped, as are rows with a non-finite loss when `drop_nonfinite` (as
the scores drop them). Returns None where it does not apply (the sketch's width differs between
rows); the caller then uses the Polars definition.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from carto_cli.io import storage
from carto_cli.io.logs import LogSet, sample_id_dtype
from carto_cli.log import schema
from carto_cli.score import compiled
from carto_cli.score.fixedpoint import SCALE
from carto_cli.score.reads import applies, read_ahead

_NO_STEP = np.iinfo(np.int64).min
_KEPT = "(kept rows)"  # `_chunks`' key for the rows of a batch that its plain columns hold
# Rows decoded at a time: the decoded sketch lists, not the log's size, set the peak memory.
BATCH_ROWS = 262_144


def extractable(logset: LogSet, *, early_epochs: int, drop_nonfinite: bool) -> pl.DataFrame | None:
    """sample_id -> `value` (Float64) for every sample of `logset` that has one (an early and a late
    sketched presentation); the others are left out (`local.with_signal` gives them null)."""
    span = applies(logset)
    keys = None if span is not None else np.unique(np.concatenate(
        [chunk[schema.SAMPLE_ID] for chunk in _chunks(logset, [schema.SAMPLE_ID], False)]))
    n_slots = span[1] - span[0] + 1 if span is not None else len(keys)

    def slots(ids: np.ndarray) -> np.ndarray:
        return (ids - span[0]).astype(np.int64) if span is not None else np.searchsorted(keys, ids)

    loops = compiled.extract_loops()  # the same batches in C where pip built them (_extract.c)
    last_step = np.full(n_slots, _NO_STEP, dtype=np.int64)
    last_epoch = np.full(n_slots, _NO_STEP, dtype=np.int64)
    runs = None
    mark = np.zeros(n_slots, dtype=np.int64)  # finds a slot twice in one batch without sorting
    first_row = 1  # the compiled loop's marks: rows numbered from 1 over the pass (0: no mark)
    late_columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.HIT_RUNS]
    for chunk in read_ahead(_chunks(logset, late_columns, drop_nonfinite, epochs=(early_epochs, None))):
        late = chunk[schema.EPOCH] >= early_epochs
        rows = _sketched(chunk, late, schema.HIT_RUNS)
        if rows is None:
            continue
        where, values = rows
        if runs is None:
            runs = np.zeros((n_slots, values.shape[1]), dtype=np.int32)  # positions < 2^31
        elif values.shape[1] != runs.shape[1]:
            return None
        idx = slots(chunk[schema.SAMPLE_ID][where])
        step, epoch = chunk[schema.STEP][where], chunk[schema.EPOCH][where]
        if loops is not None:
            loops.late_runs(np.ascontiguousarray(idx, dtype=np.int64), step.astype(np.int64), epoch.astype(np.int64),
                            np.ascontiguousarray(values, dtype=np.int32), last_step, last_epoch, runs, mark, first_row)
            first_row += len(idx)
            continue
        mark[idx] = np.arange(len(idx))
        if (mark[idx] != np.arange(len(idx))).any():  # a sample twice in this batch: its last row only
            order = np.lexsort((epoch, step, idx))
            take = order[np.append(idx[order][1:] != idx[order][:-1], True)]
            idx, step, epoch, values = idx[take], step[take], epoch[take], values[take]
        later = (step > last_step[idx]) | ((step == last_step[idx]) & (epoch > last_epoch[idx]))
        i = idx[later]
        last_step[i], last_epoch[i], runs[i] = step[later], epoch[later], values[later]

    n_early = np.zeros(n_slots, dtype=np.int64)
    best = None
    if runs is not None:
        totals = np.zeros((n_slots, runs.shape[1] // 2), dtype=np.int64)
        if loops is None:
            starts, ends = runs[:, 0::2], runs[:, 0::2] + runs[:, 1::2]  # (slots, r): run j is [start, end)
        early_columns = [schema.SAMPLE_ID, schema.EPOCH, schema.TOP_POS, schema.TOP_LOSS]
        for chunk in read_ahead(_chunks(logset, early_columns, drop_nonfinite, epochs=(None, early_epochs))):
            early = chunk[schema.EPOCH] < early_epochs
            pos_rows, loss_rows = _sketched(chunk, early, schema.TOP_POS), _sketched(chunk, early, schema.TOP_LOSS)
            if pos_rows is None or loss_rows is None:
                continue
            if not np.array_equal(pos_rows[0], loss_rows[0]) or pos_rows[1].shape != loss_rows[1].shape:
                return None  # a sketch whose two lists disagree: the Polars definition reports it
            where, pos = pos_rows
            loss = loss_rows[1].astype(np.float64)
            idx = slots(chunk[schema.SAMPLE_ID][where])
            if loops is not None:
                loops.early_sums(np.ascontiguousarray(idx, dtype=np.int64), np.ascontiguousarray(pos, dtype=np.int32),
                                 np.ascontiguousarray(loss), runs, totals, n_early, float(SCALE))
                continue
            np.add.at(n_early, idx, 1)
            finite = np.isfinite(loss)
            fixed = np.rint(np.where(finite, loss, 0.0) * SCALE).astype(np.int64)  # (m, k), 0 for the padding
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
        best = totals.max(axis=1)
    has_late = last_step != _NO_STEP
    scored = (n_early > 0) & has_late
    value = np.zeros(n_slots)
    if best is not None:
        value[scored] = best[scored].astype(np.float64) / SCALE / n_early[scored]
    ids = (np.arange(n_slots, dtype=np.int64) + span[0]) if span is not None else keys
    frame = pl.DataFrame({schema.SAMPLE_ID: ids[scored], "value": value[scored]})
    return frame.with_columns(pl.col(schema.SAMPLE_ID).cast(sample_id_dtype(logset.parts)))


def _sketched(chunk: dict, rows: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(row positions, (m, W) values) of the rows in `rows` whose list `column` is not null; None
    when there is none, or the lists differ in width. The values are gathered from the list
    array's buffers through its offsets: no list array is filtered or flattened."""
    array, kept = chunk[column], chunk[_KEPT]
    where = np.flatnonzero(rows)
    batch_rows = where if kept is None else kept[where]  # the rows' positions in the Arrow array
    valid = np.asarray(array.is_valid(), dtype=bool)[batch_rows]
    where, batch_rows = where[valid], batch_rows[valid]
    if not len(where):
        return None
    offsets = array.offsets.to_numpy()  # into array.values, slice or not
    starts = offsets[batch_rows]
    widths = offsets[batch_rows + 1] - starts
    if widths.min() != widths.max() or widths[0] == 0:
        return None
    width = int(widths[0])
    values = array.values.to_numpy(zero_copy_only=False)
    if (np.diff(offsets) == width).all():  # every list of the batch that wide (no null): one block
        block = values[offsets[0]:offsets[-1]].reshape(-1, width)
        return where, block if len(batch_rows) == len(block) else block[batch_rows]
    return where, values[starts[:, None] + np.arange(width)]


def _chunks(logset: LogSet, columns: list[str], drop_nonfinite: bool,
            epochs: tuple[int | None, int | None] = (None, None)) -> Iterator[dict]:
    """Each row group's `columns`, BATCH_ROWS rows at a time: plain columns as numpy arrays, the
    rows with a non-finite loss left out (with `drop_nonfinite`); list columns as the batch's Arrow
    arrays, whole, with `chunk[_KEPT]` the positions there of the rows kept (None: all of them).
    `epochs` (lo, hi): skip the row groups whose footer statistics show no epoch in [lo, hi)."""
    lo, hi = epochs
    for part in logset.parts:
        names = [c for c in columns if c in part.columns]
        wanted = [c for c in schema.SKETCH_COLUMNS if c in columns]
        if wanted and not any(c in part.columns for c in wanted):
            continue  # a part without the sketch adds no sketched row
        file = storage.open_parquet(part.path)
        read = names + ([schema.LOSS] if drop_nonfinite and schema.LOSS not in names else [])
        epoch_index = part.arrow_schema.names.index(schema.EPOCH)
        for rg in range(file.metadata.num_row_groups):
            stats = part.footer.row_group(rg).column(epoch_index).statistics
            if stats is not None and stats.has_min_max and (
                    (lo is not None and stats.max < lo) or (hi is not None and stats.min >= hi)):
                continue
            for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=read):
                keep = None
                if drop_nonfinite:
                    keep = np.isfinite(batch.column(schema.LOSS).to_numpy(zero_copy_only=False))
                    keep = None if keep.all() else keep
                chunk = {_KEPT: None if keep is None else np.flatnonzero(keep)}
                for name in names:
                    column = batch.column(name)
                    if name in schema.SKETCH_COLUMNS:
                        chunk[name] = column
                    else:
                        values = column.to_numpy(zero_copy_only=False)
                        chunk[name] = values if keep is None else values[keep]
                yield chunk
