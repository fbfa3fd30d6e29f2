"""The dense kernel's accumulators: per-sample arrays indexed by slot, filled a row group at a time.

One pass of `carto_cli.score.dense` holds a `Sums`: for each sample slot of the pass, its row count
and its masks of the epochs it was seen and correct in (sum of 2^epoch over its rows), packed into
one uint64 word (n in the low N_BITS bits, then s and c, MASK_BITS bits each) when the footers show
at most PACKED_EPOCHS epochs with one per row group, else three arrays; each row's loss stored at
(its epoch, its slot) of a loss matrix; and the totals over rows that check, afterwards, that no
packed field overflowed into the next (an overflow only ever moves value out of a field).
`add` makes the scatter-adds (in C where the extension was built, `compiled.add_rows`; numpy's
`np.add.at` otherwise, with the same bits); `fields` and `loss_sums` read them back (numpy
version), `bounded` says whether any sum may have wrapped.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from carto_cli.score import compiled
from carto_cli.score.fixedpoint import SCALE
from carto_cli.score.state import SQ_SPLIT, prob_units

# The packed layout: n in the low N_BITS bits, then the two masks, MASK_BITS bits each.
N_BITS = 9
MASK_BITS = 27
PACKED_EPOCHS = 16  # epochs 0..15: room for 2^(27-16) = 2048 rows per sample in a mask field
BLOCK = 1 << 15  # slots per block when the matrix is read back: a block's arrays stay in cache
FIXED_LIMIT = 2**62  # |early sum| and |late sum| below this, so their int64 total cannot overflow


class Sums:
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
            step: np.ndarray | None = None, *, bounds: tuple[int, int] | None = None) -> int | None:
        """Add rows: sample slots, epochs, losses, correctness (and steps, full state). `bounds`
        (lo, hi): the slots the rows may have (their row group's footer range; default: every slot).

        Returns None, or the position of a row outside `bounds`, or whose epoch lies before the loss
        matrix's first or past 63: the file disagrees with its footer, and the accumulators are
        left unusable (the caller reports the part as damaged). Nothing is ever written outside
        the arrays: the compiled loop checks every row, numpy's version the rows' min and max."""
        lo, hi = (0, len(self.words) - 1) if bounds is None else bounds
        one_epoch = isinstance(epoch, int)  # the row group's one epoch, from its footer
        low, high = (epoch, epoch) if one_epoch else (int(epoch.min()), int(epoch.max()))
        if low < self.first_epoch or high > 63:  # before the matrix, or no bit of a mask
            return 0 if one_epoch else int(np.flatnonzero((epoch < self.first_epoch) | (epoch > 63))[0])
        self.rows += len(idx)
        if one_epoch:  # the totals that check the packed fields afterwards (`fields`)
            bit = 1 << epoch
            self.seen_total += bit * len(idx)
            self.corr_total += bit * int(np.count_nonzero(correct))
        self._grow(high)
        if compiled.available():  # the same adds and stores in one compiled loop
            bad = compiled.add_rows(self, idx, epoch, loss, correct, step, n_bits=N_BITS, mask_bits=MASK_BITS,
                                    bounds=(lo, hi))
            return None if bad < 0 else bad
        if len(idx) and (idx.min() < lo or idx.max() > hi):
            return int(np.flatnonzero((idx < lo) | (idx > hi))[0])
        if self.first_step is not None:
            np.minimum.at(self.first_step, idx, step)
            np.maximum.at(self.last_step, idx, step)
        if one_epoch:
            if self.packed:
                one = np.uint64(1 + (bit << N_BITS))
                weight = correct.astype(np.uint64)
                weight *= np.uint64(bit << (N_BITS + MASK_BITS))
                weight += one
                add_at(self.words, idx, weight)
            else:
                np.add.at(self.n_seen, idx, 1)
                np.add.at(self.words, idx, np.uint64(bit))
                np.add.at(self.corr, idx[correct], np.uint64(bit))
            self.losses[epoch - self.first_epoch][idx] = loss
            return None
        # several epochs in a row group: never packed (the layout is chosen from the footers)
        bits = np.left_shift(np.uint64(1), epoch.astype(np.uint64))
        np.add.at(self.n_seen, idx, 1)
        add_at(self.words, idx, bits)
        bits *= correct
        add_at(self.corr, idx, bits)
        self.losses[epoch - self.first_epoch, idx] = loss
        return None

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
            (words & u64((1 << N_BITS) - 1)).cast(pl.Int64).alias("n_seen"),
            ((words // u64(1 << N_BITS)) & u64((1 << MASK_BITS) - 1)).alias("seen"),
            (words // u64(1 << (N_BITS + MASK_BITS))).alias("corr"),
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
        Read in blocks of BLOCK slots, one epoch row at a time, so every array stays in cache."""
        width = self.losses.shape[1]
        names = ("early_sum", "late", "prob_sum", "prob_sq_hi", "prob_sq_lo")
        sums = {name: np.zeros(width, dtype=np.int64) for name in names}
        masks = seen.view(np.int64)  # epochs < 53: the top bit is never set
        for start in range(0, width, BLOCK):
            block = slice(start, start + BLOCK)
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
        return not most or (self.max_epoch + math.log2(most) < 63 and self.max_abs_fixed * most < FIXED_LIMIT)


def add_at(target: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    """np.add.at of uint64 values into a uint64 array, through int64 views: the same bits
    (two's complement), and numpy's int64 scatter-add is the faster one."""
    np.add.at(target.view(np.int64), idx, values.view(np.int64))


def u64(value: int) -> pl.Expr:
    return pl.lit(value, dtype=pl.UInt64)
