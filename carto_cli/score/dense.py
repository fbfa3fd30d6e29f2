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
  footers) all three are packed into one uint64 word per sample, n in the low `_N_BITS` bits,
  then s, then c, `_MASK_BITS` bits each, so each row costs one scatter-add; whether any field
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
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa

from carto_cli.io import storage
from carto_cli.io.logs import LogSet
from carto_cli.log import schema
from carto_cli.score import compiled
from carto_cli.score.fixedpoint import SCALE
from carto_cli.score.state import SQ_SPLIT, STATE_COLUMNS, power_of_two, prob_units

# Samples per pass over the log: bounds the accumulators to 32M x 8 bytes (packed) or 24 bytes, plus
# the loss matrix (below), plus 64 bytes per sample for the counts and sums derived from them.
SAMPLES_PER_PASS = 32_000_000
# The loss matrix of a pass (epochs x samples x 4 or 8 bytes) stays below this: logs with many
# epochs are reduced in more passes.
LOSS_MATRIX_BYTES = 512 * 2**20
_BLOCK = 1 << 15  # slots per block when the matrix is read back: a block's arrays stay in cache
# The packed layout: n in the low _N_BITS bits, then the two masks, _MASK_BITS bits each.
_N_BITS = 9
_MASK_BITS = 27
PACKED_EPOCHS = 16  # epochs 0..15: room for 2^(27-16) = 2048 rows per sample in a mask field
T = TypeVar("T")
_FIXED_LIMIT = 2**62  # |early sum| and |late sum| below this, so their int64 total cannot overflow

# The state columns `state.finalize` reads.
COLUMNS = ("sample_id", "n_seen", "n_correct", "n_early", "loss_sum", "early_sum", "first_learned_epoch",
           "forget_events", "prob_sum", "prob_sq_hi", "prob_sq_lo")


def _footer_stats(logset: LogSet, column: str) -> Iterator[tuple[int, int, object]]:
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
    for _, _, stats in _footer_stats(logset, schema.SAMPLE_ID):
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
    losses = _loss_matrix(logset)
    per_pass = min(SAMPLES_PER_PASS, max(1, LOSS_MATRIX_BYTES // (losses[1] * losses[2].itemsize)))
    n_passes = max(1, math.ceil(n_ids / per_pass))
    return span[0], n_ids, losses, n_passes, math.ceil(n_ids / n_passes)


def accumulated(logset: LogSet, kernel) -> tuple[_Sums, int] | None:
    """The checked accumulators of the whole log and its lowest sample_id (sample `lo + slot` at
    `slot`), for `carto_cli.score.streamed`, which finishes them a chunk at a time; None where the
    kernel declines. Needs the compiled extension and a log the kernel reduces in one pass (`passes`)."""
    if not compiled.available() or passes(logset) != 1:
        raise ValueError("dense.accumulated: one pass and the compiled extension are needed")

    def whole(sums: _Sums, slots: tuple) -> _Sums | str | None:
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
    groups = _row_groups(logset)
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


def _loss_matrix(logset: LogSet) -> tuple[int, int, np.dtype]:
    """The loss matrix's first epoch, rows and float type: the epochs of the footer statistics
    (from 0 if a row group has none; the matrix grows if such a row group holds a later epoch), so
    parts holding only late epochs (`--update` folding epoch 40) take a row per epoch they hold;
    float32 when every part stores the loss as float32, else float64: a stored loss is the logged one."""
    stats = [s for _, _, s in _footer_stats(logset, schema.EPOCH)]
    known = [s for s in stats if s is not None]
    first = min(int(s.min) for s in known) if known and len(known) == len(stats) else 0
    last = max([first, *(int(s.max) for s in known)])
    single = all(part.arrow_schema.field(schema.LOSS).type == pa.float32() for part in logset.parts)
    return max(first, 0), last - max(first, 0) + 1, np.dtype(np.float32 if single else np.float64)


def _row_groups(logset: LogSet) -> list[tuple[int, int, int | None]]:
    """(part index, row group, its one epoch or None) of every non-empty row group; the epoch comes
    from the footer statistics when they show a single epoch, so its column need not be read."""
    return [(i, rg, int(stats.min) if stats is not None and stats.min == stats.max else None)
            for i, rg, stats in _footer_stats(logset, schema.EPOCH)]


def _columns(kernel, with_epoch: bool, with_step: bool) -> list[str]:
    """What the kernel reads: ids, epochs (unless known), losses, the correctness rule's column, and
    steps for the full state."""
    names = [schema.SAMPLE_ID, schema.EPOCH, schema.LOSS, kernel.rule.column, schema.STEP]
    return list(dict.fromkeys(n for n in names if (with_epoch or n != schema.EPOCH)
                              and (with_step or n != schema.STEP)))


def _correct(kernel, values: np.ndarray) -> np.ndarray:
    """The rule applied to its column (NaN is never correct, as in `CorrectnessRule.expr`)."""
    rule = kernel.rule
    if rule.source == "log":
        return values.astype(bool)
    return values >= rule.threshold if rule.source == "acc" else values < rule.threshold


def _read(logset: LogSet, groups: list, kernel, unsigned: bool, full: bool) -> Iterator[tuple]:
    """(ids, epoch array or the row group's one epoch, loss, rule column, steps or None), one row
    group at a time."""
    files: dict[int, object] = {}
    for i, rg, epoch in groups:
        if i not in files:
            files = {i: storage.open_parquet(logset.parts[i].path)}  # parts are read in order: one open
        table = files[i].read_row_group(rg, columns=_columns(kernel, epoch is None, full), use_threads=True)
        yield (
            table.column(schema.SAMPLE_ID).to_numpy().astype(np.uint64 if unsigned else np.int64, copy=False),
            table.column(schema.EPOCH).to_numpy().astype(np.int64, copy=False) if epoch is None else epoch,
            table.column(schema.LOSS).to_numpy(),
            table.column(kernel.rule.column).to_numpy(),
            table.column(schema.STEP).to_numpy().astype(np.int64, copy=False) if full else None,
        )


class _Sums:
    """The accumulators of one pass: per-sample row counts and epoch masks (added), each row's loss
    (stored at its epoch and slot), and the totals over rows, to check the packed fields afterwards."""

    def __init__(self, width: int, packed: bool, full: bool = False, *,
                 losses: tuple[int, int, np.dtype] = (0, 1, np.dtype(np.float64))) -> None:
        self.packed = packed
        # the full state: each sample's first and last step
        self.first_step = np.full(width, np.iinfo(np.int64).max, dtype=np.int64) if full else None
        self.last_step = np.full(width, np.iinfo(np.int64).min, dtype=np.int64) if full else None
        self.words = np.zeros(width, dtype=np.uint64)  # packed: n | s << 9 | c << 36; else s
        self.n_seen = None if packed else np.zeros(width, dtype=np.int64)
        self.corr = None if packed else np.zeros(width, dtype=np.uint64)
        self.first_epoch = losses[0]  # the epoch of the loss matrix's row 0
        self.losses = np.zeros((losses[1], width), dtype=losses[2])  # (epoch - first_epoch, slot) -> loss
        self.rows = self.seen_total = self.corr_total = 0
        self.dropped = 0  # rows left out for a non-finite loss (kernel.drop_nonfinite)
        self.max_epoch = 0
        self.max_abs_fixed = 0

    def add(self, idx: np.ndarray, epoch: np.ndarray | int, loss: np.ndarray, correct: np.ndarray,
            step: np.ndarray | None = None) -> None:
        """Add rows: sample slots, epochs, losses, correctness (and steps, full state)."""
        self.rows += len(idx)
        one_epoch = isinstance(epoch, int)  # the row group's one epoch, from its footer
        if one_epoch:  # the totals that check the packed fields afterwards (`fields`)
            bit = 1 << epoch
            self.seen_total += bit * len(idx)
            self.corr_total += bit * int(np.count_nonzero(correct))
        self._grow(epoch if one_epoch else int(epoch.max()))
        if compiled.available():  # the same adds and stores in one compiled loop
            compiled.add_rows(self, idx, epoch, loss, correct, step, n_bits=_N_BITS, mask_bits=_MASK_BITS)
            return
        if self.first_step is not None:
            np.minimum.at(self.first_step, idx, step)
            np.maximum.at(self.last_step, idx, step)
        if one_epoch:
            if self.packed:
                one = np.uint64(1 + (bit << _N_BITS))
                weight = correct.astype(np.uint64)
                weight *= np.uint64(bit << (_N_BITS + _MASK_BITS))
                weight += one
                _add_at(self.words, idx, weight)
            else:
                np.add.at(self.n_seen, idx, 1)
                np.add.at(self.words, idx, np.uint64(bit))
                np.add.at(self.corr, idx[correct], np.uint64(bit))
            self.losses[epoch - self.first_epoch][idx] = loss
            return
        # several epochs in a row group: never packed (the layout is chosen from the footers)
        bits = np.left_shift(np.uint64(1), epoch.astype(np.uint64))
        np.add.at(self.n_seen, idx, 1)
        _add_at(self.words, idx, bits)
        bits *= correct
        _add_at(self.corr, idx, bits)
        self.losses[epoch - self.first_epoch, idx] = loss

    def _grow(self, epoch: int) -> None:
        """Room in the loss matrix for `epoch` (its row count comes from the footers; a row group
        without statistics may hold a later epoch)."""
        if epoch - self.first_epoch >= len(self.losses):
            grown = np.zeros((epoch - self.first_epoch + 1, self.losses.shape[1]), dtype=self.losses.dtype)
            grown[: len(self.losses)] = self.losses
            self.losses = grown

    def fields(self) -> pl.DataFrame | None:
        """n_seen, seen (s) and corr (c) per sample slot, as a frame over these arrays (the packed
        words split by Polars, which does it faster and in fewer fresh pages than numpy); None where
        a packed field overflowed into the next."""
        steps = {} if self.first_step is None else {"first_step": self.first_step, "last_step": self.last_step}
        if not self.packed:
            return pl.DataFrame({"n_seen": self.n_seen, "seen": self.words, "corr": self.corr, **steps})
        words = pl.col("words")
        frame = pl.DataFrame({"words": self.words, **steps}).select(
            (words & _u64((1 << _N_BITS) - 1)).cast(pl.Int64).alias("n_seen"),
            ((words // _u64(1 << _N_BITS)) & _u64((1 << _MASK_BITS) - 1)).alias("seen"),
            (words // _u64(1 << (_N_BITS + _MASK_BITS))).alias("corr"),
            *steps,
        )
        # an overflow moves value out of a field, so that field's total over samples falls short
        totals = frame.select(pl.col("n_seen", "seen", "corr").sum()).row(0)
        if totals != (self.rows, self.seen_total, self.corr_total):
            return None
        return frame

    def loss_sums(self, seen: np.ndarray, early_epochs: int) -> dict[str, np.ndarray]:
        """Per sample slot, from the loss matrix: early_sum and late (the fixed-point loss sums of
        the early epochs and of the others), prob_sum, prob_sq_hi and prob_sq_lo (the exact sums of
        p and p^2 in `state.prob_units`, over the epochs in the slot's mask `seen`, normalised).
        Read in blocks of _BLOCK slots, one epoch row at a time, so every array stays in cache."""
        width = self.losses.shape[1]
        names = ("early_sum", "late", "prob_sum", "prob_sq_hi", "prob_sq_lo")
        sums = {name: np.zeros(width, dtype=np.int64) for name in names}
        masks = seen.view(np.int64)  # epochs < 53: the top bit is never set
        for start in range(0, width, _BLOCK):
            block = slice(start, start + _BLOCK)
            mask = masks[block]
            early, late, total, high, low = (sums[name][block] for name in names)
            for epoch, losses in enumerate(self.losses[:, block], start=self.first_epoch):
                fixed = losses.astype(np.float64)
                fixed *= SCALE
                fixed = np.rint(fixed, out=fixed).astype(np.int64)  # as fixedpoint.fixed_sum; 0 where unseen
                target = early if epoch < early_epochs else late
                target += fixed
                units = prob_units(fixed)
                units *= (mask >> epoch) & 1
                total += units
                units *= units  # below 2^62
                low += units & (SQ_SPLIT - 1)
                units >>= SQ_SPLIT.bit_length() - 1
                high += units
        sums["prob_sq_hi"] += sums["prob_sq_lo"] >> (SQ_SPLIT.bit_length() - 1)
        sums["prob_sq_lo"] &= SQ_SPLIT - 1
        return sums

    def bounded(self, most: int) -> bool:
        """Whether no mask or loss sum can have wrapped, `most` being the largest row count of a
        sample (else the Polars kernel, exact there, runs)."""
        return not most or (self.max_epoch + math.log2(most) < 63 and self.max_abs_fixed * most < _FIXED_LIMIT)


def _add_at(target: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    """np.add.at of uint64 values into a uint64 array, through int64 views: the same bits
    (two's complement), and numpy's int64 scatter-add is the faster one."""
    np.add.at(target.view(np.int64), idx, values.view(np.int64))


def _u64(value: int) -> pl.Expr:
    return pl.lit(value, dtype=pl.UInt64)


def _accumulate(logset: LogSet, groups: list, kernel, slots: tuple[int, int, int, int, int],
                losses: tuple[int, int, np.dtype], packed: bool, full: bool = False) -> _Sums | None:
    """Accumulate the samples in slots [start, start + width) of the n_ids slots of ids
    lo + slot * stride, over the whole log, one row group at a time, the next row group read while
    this one is added; `losses`: the loss matrix's epochs and float type (`_loss_matrix`). With
    `packed`, the packed layout is used where the footers allow it. None where the kernel declines.
    """
    lo, start, width, n_ids, stride = slots
    unsigned = kernel.sample_id_dtype == "UInt64"
    first_id = lo + start * stride
    base = np.uint64(first_id) if unsigned else np.int64(first_id)
    whole = start == 0 and width == n_ids  # one pass: every id is in [lo, hi] by the footers
    packed = packed and all(e is not None and 0 <= e < PACKED_EPOCHS for _, _, e in groups)
    sums = _Sums(width, packed, full, losses=losses)
    for chunk in read_ahead(_read(logset, groups, kernel, unsigned, full)):
        ids, epoch, loss, rule_values, step = chunk
        idx = (ids - base).astype(np.int64, copy=False)  # below the slice: negative (wrapped if unsigned)
        if stride > 1:
            if np.remainder(idx, stride).any():
                return None  # an id off the stride: not one bucket of a bucketed log
            idx //= stride
        keep = None if whole else (idx >= 0) & (idx < width)
        if kernel.drop_nonfinite:
            finite = np.isfinite(loss)
            if keep is None:
                sums.dropped += len(finite) - int(np.count_nonzero(finite))
            else:  # only this pass's samples: each row is counted in exactly one pass
                sums.dropped += int(np.count_nonzero(keep & ~finite))
            keep = finite if keep is None else keep & finite
        many = not isinstance(epoch, int)
        if keep is not None and not keep.all():
            idx, loss, rule_values = idx[keep], loss[keep], rule_values[keep]
            epoch = epoch[keep] if many else epoch
            step = step[keep] if full else None
        if not len(idx):
            continue
        low, high = (int(epoch.min()), int(epoch.max())) if many else (epoch, epoch)
        peak = float(np.abs(loss).max()) * SCALE
        if low < sums.first_epoch or high > 52 or peak >= _FIXED_LIMIT:  # see _Sums.bounded
            return None
        sums.max_epoch = max(sums.max_epoch, high)
        sums.max_abs_fixed = max(sums.max_abs_fixed, round(peak))
        sums.add(idx, epoch, loss, _correct(kernel, rule_values), step)
    return sums


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


def _state_pass(sums: _Sums, slots: tuple[int, int, int, int, int], kernel, full: bool
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
    return (*_derive(fields, kernel.early_epochs, lo + start * stride, stride,
                     kernel.sample_id_dtype == "UInt64", full), dropped)


def _scores_pass(sums: _Sums, slots: tuple[int, int, int, int, int], early_epochs: int, never_learned: str
                 ) -> tuple[dict, np.ndarray, int] | str | None:
    """The score columns of one pass's accumulated samples (`compiled.finish`), the irregular
    flags and the rows dropped; "unpack" and None as `_state_pass`."""
    ranges = _checked(sums)
    if not isinstance(ranges, list):
        return ranges
    lo, start, _, _, stride = slots
    columns, irregular = compiled.finish(sums, ranges, n_bits=_N_BITS, mask_bits=_MASK_BITS,
                                         early_epochs=early_epochs, never_learned=never_learned,
                                         first_id=lo + start * stride, stride=stride)
    return columns, irregular, sums.dropped


def _checked(sums: _Sums) -> list[tuple[int, int, int]] | str | None:
    """`compiled.survey`'s ranges of a pass's accumulators; "unpack" when a packed field
    overflowed, None when a sum may have wrapped (as `_state_pass`)."""
    ranges, most, totals = compiled.survey(sums, n_bits=_N_BITS, mask_bits=_MASK_BITS)
    # an overflow moves value out of a field, so that field's total over samples falls short
    if sums.packed and totals != (sums.rows, sums.seen_total, sums.corr_total):
        return "unpack"
    return ranges if sums.bounded(most) else None


def frame(columns: dict[str, tuple[np.ndarray, np.ndarray | None]], unsigned: bool) -> pl.DataFrame:
    """A scores frame over the arrays of `scores` (through Arrow buffers: the values are not
    copied), sorted by sample_id (where it has that column)."""
    arrays = {}
    for name, (values, valid) in columns.items():
        if name == schema.SAMPLE_ID and unsigned:
            values = values.view(np.uint64)
        bitmap = None if valid is None or valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
        if values.dtype == np.bool_:
            arrays[name] = pa.Array.from_buffers(pa.bool_(), len(values),
                                                 [bitmap, pa.py_buffer(np.packbits(values, bitorder="little"))])
        else:
            arrays[name] = pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values),
                                                 [bitmap, pa.py_buffer(values)])
    frame = pl.from_arrow(pa.table(arrays))
    return frame.with_columns(pl.col(schema.SAMPLE_ID).set_sorted()) if schema.SAMPLE_ID in arrays else frame


def replace_rows(columns: dict[str, tuple[np.ndarray, np.ndarray | None]], scores: pl.DataFrame,
                 unsigned: bool) -> None:
    """Overwrite, in the arrays of `scores()`, the rows of the samples of `scores` (a `finalize`
    frame of some of them, each of them among the arrays' samples)."""
    ids = columns[schema.SAMPLE_ID][0]
    ids = ids.view(np.uint64) if unsigned else ids
    wanted = scores[schema.SAMPLE_ID].to_numpy()
    at = np.searchsorted(ids, wanted)
    if len(ids) == 0 or not np.array_equal(ids[np.minimum(at, len(ids) - 1)], wanted):
        raise AssertionError("the recounted samples are not all among the dense kernel's samples")
    for name, (values, valid) in columns.items():
        if name == schema.SAMPLE_ID:
            continue
        column = scores[name]
        if valid is not None:
            valid[at] = column.is_not_null().to_numpy()
        elif column.null_count():
            raise AssertionError(f"a recounted {name} is null where the dense kernel has no nulls")
        values[at] = column.fill_null(0).to_numpy()


def _derive(fields: pl.DataFrame, early_epochs: int, first_id: int, stride: int, unsigned: bool,
            full: bool = False) -> tuple[pl.DataFrame, np.ndarray]:
    """State columns (COLUMNS, or with `full` every state column) of the regular samples present,
    from the per-slot sums; ids of the irregular ones, for the general path to recount."""
    n, seen, corr = pl.col("n_seen"), pl.col("seen"), pl.col("corr")
    dtype = pl.UInt64 if unsigned else pl.Int64
    first_epoch = seen.bitwise_trailing_zeros().cast(pl.Int64)
    last_epoch = 63 - seen.bitwise_leading_zeros().cast(pl.Int64)
    # Once per epoch (a repeat carries, so the popcount falls short) in consecutive epochs.
    regular = (seen.bitwise_count_ones().cast(pl.Int64) == n) & (n == last_epoch - first_epoch + 1)
    early_mask = _u64((1 << min(early_epochs, 64)) - 1)
    frame = (
        fields.with_columns(
            sample_id=pl.int_range(pl.len(), dtype=dtype) * pl.lit(stride, dtype=dtype) + pl.lit(first_id, dtype=dtype)
        )
        .filter(n > 0)
        .with_columns(
            regular=regular,
            n_correct=corr.bitwise_count_ones().cast(pl.Int64),
            n_early=(seen & early_mask).bitwise_count_ones().cast(pl.Int64),
            loss_sum=pl.col("early_sum") + pl.col("late"),
            first_learned_epoch=pl.when(corr > 0).then(corr.bitwise_trailing_zeros().cast(pl.Int64)),
            # a correct pass followed by an incorrect one: c & ~(c >> 1), within the seen passes
            forget_events=(corr & ~(corr // _u64(2)) & (seen // _u64(2))).bitwise_count_ones().cast(pl.Int64),
        )
    )
    columns = COLUMNS
    if full:  # regular samples: epoch order is presentation order, so bit e of c is the epoch-e row's
        def bit_at(epoch: str) -> pl.Expr:
            return (corr // power_of_two(pl.col(epoch))) % 2 == 1

        frame = frame.with_columns(first_epoch=first_epoch, last_epoch=last_epoch).with_columns(
            first_correct=bit_at("first_epoch"), last_correct=bit_at("last_epoch"))
        columns = STATE_COLUMNS
    irregular = frame.filter(~pl.col("regular"))[schema.SAMPLE_ID].to_numpy()
    state = frame.filter(pl.col("regular")).select(columns).with_columns(pl.col(schema.SAMPLE_ID).set_sorted())
    return state, irregular
