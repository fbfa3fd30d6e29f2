"""The dense-id kernel: per-sample state by adding into arrays indexed by sample_id.

When a log's sample ids fill an integer range [lo, hi] that is no longer than the log has rows
(as dataset indices do), a sample's accumulators can live at position `sample_id - lo` of plain
integer arrays, and the log is reduced by in-place scatter-adds (`np.add.at`), one row group at a
time: no hash table, no sort, no join, and no array the size of the sample range made per row
group (on a virtual machine, faulting in fresh memory costs more than the arithmetic). This is the
bitmask method (see `carto_cli.score.state`) computed with arrays instead of a Polars group_by; it
gives the same numbers bit for bit:

- per sample, the masks s = sum of 2^epoch over its rows and c = the same over correct rows, and
  its number of rows, are integer sums. With few epochs (at most `PACKED_EPOCHS`, from the
  footers) all three are packed into one uint64 word per sample, n in the low `N_BITS` bits,
  then s, then c, `MASK_BITS` bits each, so each row costs one scatter-add; whether any field
  overflowed into the next is checked exactly afterwards (the sum of each field over all samples
  must equal the same sum over rows: an overflow only ever moves value out of a field). With more
  epochs they are three arrays (exact while epochs + log2(rows per sample) < 64);
- each row's loss is stored (not added) at (its epoch, its sample's slot) of a matrix with one
  row per epoch, in the log's float type. After the pass, the matrix is read in blocks of slots
  that stay in cache, one epoch row at a time: the losses are summed in the same fixed point as
  the other paths (round(loss * 2^32), half to even, as Polars rounds) as int64, early epochs and
  the others apart (checked: max |loss| * 2^32 * rows per sample < 2^62, else fall back), and the
  probabilities p = exp(-loss) of the epochs each sample was seen in are turned into the state's
  exact sums of p and p^2 (`state.prob_units`). A store costs less than a scatter-add, and the
  per-row arithmetic (fixed point, p) runs over contiguous memory. A sample seen twice in an epoch
  keeps only one loss there, but it is irregular (below) and recounted anyway; a slot never seen
  in an epoch holds 0 there, which adds nothing to the loss sums and is masked out of p's sums
  by the sample's epoch mask;
- samples that break the bitmask conditions (a repeat within an epoch, a gap between epochs) are
  recounted by the general path, exactly as the Polars bitmask kernel does.

`state` returns None whenever the kernel does not apply (ids not dense, no footer statistics, a
negative epoch, the exactness bounds above); the caller then runs the Polars kernel. It produces
the columns `finalize` needs (COLUMNS) or, with `full=True`, the whole per-sample state that
`--update` saves (`state.STATE_COLUMNS`): then the first and last step are kept too (two more
in-place reductions per row, `np.minimum.at` / `np.maximum.at`), and the first and last epoch and
their correctness are read off the masks, as the Polars bitmask kernel does.

With the compiled extension (`carto_cli.score.compiled`), the adds run in C, and `scores` goes
further than `state`: its second pass writes the score columns (`finalize`'s, sorted by
sample_id) straight from the packed words and the loss matrix, so neither the per-slot sums nor
the state frame is ever made (`frame` wraps the arrays without copying them); the irregular
samples' rows are replaced by the caller (`replace_rows`). Both go through `_reduce`, which makes
the passes and the unpacked retry. `accumulated` goes less far: it hands the checked accumulators
of a log reduced in one pass to `carto_cli.score.streamed`, which finishes them a chunk at a time
as they are written.

Its parts, one module per concept: what it reads of the log and the footer statistics it plans
from (`carto_cli.score.reads`), its accumulators (`carto_cli.score.accumulators`), and its outputs
as frames (`carto_cli.score.dense_columns`); here, the passes over the log.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from carto_cli.io.logs import LogSet
from carto_cli.log import schema
from carto_cli.score import compiled, reads
from carto_cli.score.accumulators import FIXED_LIMIT, MASK_BITS, N_BITS, PACKED_EPOCHS, Sums
from carto_cli.score.dense_columns import COLUMNS, derive_state, frame, replace_rows
from carto_cli.score.fixedpoint import SCALE
from carto_cli.score.reads import applies, id_range, loss_matrix, read_ahead
from carto_cli.score.state import MAX_ABS_LOSS

__all__ = ["COLUMNS", "accumulated", "applies", "frame", "id_range", "passes", "read_ahead", "replace_rows", "scores",
           "state"]

# Samples per pass over the log: bounds the accumulators to 32M x 8 bytes (packed) or 24 bytes, plus
# the loss matrix (below), plus 64 bytes per sample for the counts and sums derived from them.
SAMPLES_PER_PASS = 32_000_000
# The loss matrix of a pass (epochs x samples x 4 or 8 bytes) stays below this: logs with many
# epochs are reduced in more passes.
LOSS_MATRIX_BYTES = 512 * 2**20
# The names the tests and `streamed` used before the accumulators had a module of their own.
_Sums, _N_BITS, _MASK_BITS, _loss_matrix = Sums, N_BITS, MASK_BITS, loss_matrix



def state(logset: LogSet, kernel, *, stride: int = 1, full: bool = False
          ) -> tuple[pl.DataFrame, np.ndarray, int] | None:
    """Per-sample state (COLUMNS, or with `full` every state column) of the regular samples, the
    ids of the irregular ones (a repeat within an epoch, a gap between epochs: the caller recounts
    them with the general Polars kernel) and the number of rows dropped for a non-finite loss (with
    `kernel.drop_nonfinite`), or None.

    `kernel` is the planner's `Kernel` (rule, early epochs, non-finite handling, id dtype): read
    for its fields only.
    `stride` n: every sample_id is lo plus a multiple of n (bucket b of n holds the ids = b mod n);
    checked on every row (the kernel declines otherwise).
    """
    results = _reduce(logset, kernel, stride, full, lambda sums, slots: _state_pass(sums, slots, kernel, full))
    if results is None:
        return None
    frames, irregular, dropped = zip(*results)
    return pl.concat(frames), np.concatenate(irregular), sum(dropped)  # ascending sample_id, pass after pass


def scores(logset: LogSet, kernel, *, never_learned: str, stride: int = 1
           ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], np.ndarray, int] | None:
    """The score columns (`compiled.OUTPUTS`: values and validity) of every sample, ascending by
    sample_id, straight from the accumulators by the compiled `finish` (None without the compiled
    extension, or where `state` would decline); the ids of the irregular samples, whose rows the
    caller must replace with the general kernel's; the rows dropped for a non-finite loss."""
    if not compiled.available():
        return None
    results = _reduce(logset, kernel, stride, False,
                      lambda sums, slots: _scores_pass(sums, slots, kernel.early_epochs, never_learned))
    if results is None:
        return None
    parts, flags, dropped = zip(*results)
    columns = parts[0] if len(parts) == 1 else {
        name: (np.concatenate([p[name][0] for p in parts]),
               None if parts[0][name][1] is None else np.concatenate([p[name][1] for p in parts]))
        for name in parts[0]}
    flags = np.concatenate(flags)
    ids = columns[schema.SAMPLE_ID][0]
    irregular = ids[flags]
    return columns, irregular.view(np.uint64) if kernel.sample_id_dtype == "UInt64" else irregular, sum(dropped)


def passes(logset: LogSet, stride: int = 1) -> int | None:
    """How many passes over the log the dense kernel makes (None where it does not apply): one per
    SAMPLES_PER_PASS samples, or per LOSS_MATRIX_BYTES of loss matrix."""
    layout = _layout(logset, stride)
    return None if layout is None else layout[3]


def _layout(logset: LogSet, stride: int) -> tuple[int, int, tuple[int, int, np.dtype], int, int] | None:
    """(lowest id, slots, loss matrix layout (`_loss_matrix`), passes, slots per pass), or None
    where the kernel does not apply."""
    span = applies(logset, stride)
    if span is None:
        return None
    n_ids = (span[1] - span[0]) // stride + 1
    losses = loss_matrix(logset)
    per_pass = min(SAMPLES_PER_PASS, max(1, LOSS_MATRIX_BYTES // (losses[1] * losses[2].itemsize)))
    n_passes = max(1, math.ceil(n_ids / per_pass))
    return span[0], n_ids, losses, n_passes, math.ceil(n_ids / n_passes)


def accumulated(logset: LogSet, kernel) -> tuple[Sums, int] | None:
    """The checked accumulators of the whole log and its lowest sample_id (sample `lo + slot` at
    `slot`), for `carto_cli.score.streamed`, which finishes them a chunk at a time; None where the
    kernel declines. Needs the compiled extension and a log the kernel reduces in one pass (`passes`)."""
    if not compiled.available() or passes(logset) != 1:
        raise ValueError("dense.accumulated: one pass and the compiled extension are needed")

    def whole(sums: Sums, slots: tuple) -> Sums | str | None:
        checked = _checked(sums)
        return sums if isinstance(checked, list) else checked

    results = _reduce(logset, kernel, 1, False, whole)
    return None if results is None else (results[0], applies(logset)[0])


def _reduce(logset: LogSet, kernel, stride: int, full: bool, finish) -> list | None:
    """`finish(sums, slots)` of each pass over the log (a pass accumulates a range of sample
    slots, `_accumulate`), as a list, or None where the kernel declines. `finish` returns "unpack"
    when a packed field overflowed: the pass is then made again with one array per field."""
    layout = _layout(logset, stride)
    if layout is None:
        return None
    lo, n_ids, losses, n_passes, width = layout
    groups = reads.row_groups(logset)
    results = []
    for p in range(n_passes):
        start = p * width
        slots = (lo, start, min(width, n_ids - start), n_ids, stride)
        result = None
        for packed in (True, False):  # unpacked when a packed field overflowed (many rows per sample)
            sums = _accumulate(logset, groups, kernel, slots, losses, packed=packed, full=full)
            result = None if sums is None else finish(sums, slots)
            if result != "unpack":
                break
        if result is None or result == "unpack":
            return None
        results.append(result)
    return results



def _accumulate(logset: LogSet, groups: list[reads.RowGroup], kernel, slots: tuple[int, int, int, int, int],
                losses: tuple[int, int, np.dtype], packed: bool, full: bool = False) -> Sums | None:
    """Accumulate the samples in slots [start, start + width) of the n_ids slots of ids
    lo + slot * stride, over the whole log, one row group at a time, the next row group read while
    this one is added; `losses`: the loss matrix's epochs and float type (`_loss_matrix`). With
    `packed`, the packed layout is used where the footers allow it. None where the kernel declines.

    Every id must lie in its row group's footer range (the plan's arrays were sized from those):
    checked on every row, in the compiled loop (one pass) or with numpy (several passes, or numpy's
    version); an id outside it is the `damaged` error naming the part (`reads.outside_footer`).
    """
    lo, start, width, n_ids, stride = slots
    unsigned = kernel.sample_id_dtype == "UInt64"
    first_id = lo + start * stride
    base = np.uint64(first_id) if unsigned else np.int64(first_id)
    whole = start == 0 and width == n_ids  # one pass: the footer ranges are slots of this pass
    packed = packed and all(g.epoch is not None and 0 <= g.epoch < PACKED_EPOCHS for g in groups)
    sums = Sums(width, packed, full, losses=losses)
    for rows in read_ahead(reads.read(logset, groups, kernel, unsigned, full)):
        where, epoch, loss, rule_values, step = rows.where, rows.epoch, rows.loss, rows.rule_values, rows.step
        # wraps below the slice (and for any id outside the footer range: never onto a slot inside it)
        idx = (rows.ids - base).astype(np.int64, copy=False)
        if stride > 1:
            if np.remainder(idx, stride).any():
                return None  # an id off the stride: not one bucket of a bucketed log
            idx //= stride
        # the row group's footer range, as slots of this pass (floor: ids are first_id + k * stride)
        bounds = ((where.ids[0] - first_id) // stride, (where.ids[1] - first_id) // stride)
        keep = None
        if not whole:  # the rows of this pass's slots, once every row is known to be in its range
            _check_slots(logset, where, rows.ids, idx, bounds)
            keep = (idx >= 0) & (idx < width)
        if kernel.drop_nonfinite:
            finite = np.isfinite(loss)
            if keep is None:
                sums.dropped += len(finite) - int(np.count_nonzero(finite))
            else:  # only this pass's samples: each row is counted in exactly one pass
                sums.dropped += int(np.count_nonzero(keep & ~finite))
            keep = finite if keep is None else keep & finite
        many = not isinstance(epoch, int)
        ids = rows.ids
        if keep is not None and not keep.all():
            idx, loss, rule_values, ids = idx[keep], loss[keep], rule_values[keep], ids[keep]
            epoch = epoch[keep] if many else epoch
            step = step[keep] if full else None
        if not len(idx):
            continue
        low, high = (int(epoch.min()), int(epoch.max())) if many else (epoch, epoch)
        peak = float(np.abs(loss).max()) * SCALE
        # see Sums.bounded; a loss beyond MAX_ABS_LOSS (which footers planned from may deny): `prepare` reports it
        if low < sums.first_epoch or high > 52 or peak >= FIXED_LIMIT or peak > MAX_ABS_LOSS * SCALE:
            return None
        sums.max_epoch = max(sums.max_epoch, high)
        sums.max_abs_fixed = max(sums.max_abs_fixed, round(peak))
        bad = sums.add(idx, epoch, loss, reads.correct_of(kernel, rule_values), step,
                       bounds=(max(bounds[0], 0), min(bounds[1], width - 1)) if whole else None)
        if bad is not None:  # outside its footer's range (the epochs were checked above)
            _check_slots(logset, where, ids[bad:bad + 1], idx[bad:bad + 1], bounds)
            raise AssertionError("the dense kernel stopped at a row whose slot and epoch are in range")
    return sums


def _check_slots(logset: LogSet, where: reads.RowGroup, ids: np.ndarray, idx: np.ndarray,
                 bounds: tuple[int, int]) -> None:
    """The `damaged` error when any of `idx` (the slots of `ids`) lies outside `bounds`, the row
    group's footer range."""
    if len(idx) and (idx.min() < bounds[0] or idx.max() > bounds[1]):
        outside = ids[(idx < bounds[0]) | (idx > bounds[1])]
        raise reads.outside_footer(logset.parts[where.part].path, where.group, schema.SAMPLE_ID,
                                   int(outside.min()), int(outside.max()), where.ids)


def _state_pass(sums: Sums, slots: tuple[int, int, int, int, int], kernel, full: bool
                ) -> tuple[pl.DataFrame, np.ndarray, int] | str | None:
    """The state of one pass's accumulated samples (`_derive`), the ids of the irregular ones and
    the rows dropped; "unpack" when a packed field overflowed, None when a sum may have wrapped."""
    fields = sums.fields()
    if fields is None:
        return "unpack"
    if not sums.bounded(int(fields["n_seen"].max() or 0)):
        return None
    dropped = sums.dropped
    sums.words = sums.n_seen = sums.corr = None  # in `fields` now: free them before the sums are made
    sums_of_losses = sums.loss_sums(fields["seen"].to_numpy(), kernel.early_epochs)
    fields = fields.hstack([pl.Series(name, values) for name, values in sums_of_losses.items()])
    del sums
    lo, start, _, _, stride = slots
    return (*derive_state(fields, kernel.early_epochs, lo + start * stride, stride,
                     kernel.sample_id_dtype == "UInt64", full), dropped)


def _scores_pass(sums: Sums, slots: tuple[int, int, int, int, int], early_epochs: int, never_learned: str
                 ) -> tuple[dict, np.ndarray, int] | str | None:
    """The score columns of one pass's accumulated samples (`compiled.finish`), the irregular
    flags and the rows dropped; "unpack" and None as `_state_pass`."""
    ranges = _checked(sums)
    if not isinstance(ranges, list):
        return ranges
    lo, start, _, _, stride = slots
    columns, irregular = compiled.finish(sums, ranges, n_bits=N_BITS, mask_bits=MASK_BITS,
                                         early_epochs=early_epochs, never_learned=never_learned,
                                         first_id=lo + start * stride, stride=stride)
    return columns, irregular, sums.dropped


def _checked(sums: Sums) -> list[tuple[int, int, int]] | str | None:
    """`compiled.survey`'s ranges of a pass's accumulators; "unpack" when a packed field
    overflowed, None when a sum may have wrapped (as `_state_pass`)."""
    ranges, most, totals = compiled.survey(sums, n_bits=N_BITS, mask_bits=MASK_BITS)
    # an overflow moves value out of a field, so that field's total over samples falls short
    if sums.packed and totals != (sums.rows, sums.seen_total, sums.corr_total):
        return "unpack"
    return ranges if sums.bounded(most) else None


