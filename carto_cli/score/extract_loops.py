"""The `extractable` signal's per-slot state and its per-batch steps (see `carto_cli.score.extract`,
which reads the batches and picks the rows): compiled (`_extract.c`, where pip built it) or numpy's,
with the same results (tests/test_extractable.py).

- `Compiled`: every slot's accumulators in one record of an arena (the layout is `_extract.c`'s):
  the late pass's last step, epoch and mark and its runs; then, in the same bytes, the early
  pass's totals (48-bit) beside the runs and the count of early rows. One allocation for both
  passes, 64 bytes a sample with the shim's sketch (one cache line: a row touches one line), cut
  to the values at the end. The loops read the batch's list columns in place.
- `Numpy`: one array per field; the batch's lists gathered into (m, width) arrays first.

Both take the slots already mapped and, for numpy, checked against the footer (the compiled loops
check them); each step returns what the compiled loop returns: (the first row outside the bounds
or -1, [the largest |fixed-point loss|,] a status: `extract`'s `_OK` ... `_LISTS_DIFFER`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from carto_cli.score.fixedpoint import SCALE

NO_STEP = np.iinfo(np.int64).min
NO_EPOCH = np.iinfo(np.int32).min  # numpy's: a slot without a late sketched presentation
MAX_WIDTH = 1024  # hit_runs values a list at most for the compiled loops (the shim logs 12)
_LOSS_LIMIT = 2.0**31  # |sketched loss| below this: its fixed point (x SCALE) fits int64
_OK, _OTHER_WIDTH, _OUT_OF_RANGE, _LISTS_DIFFER = range(4)
ALL = slice(None)  # the rows of a batch: every one (indexing with it gathers nothing)
_IDENTITY = np.empty(0, dtype=np.int64)  # the compiled loops' "every row, in order"


class Compiled:
    """The slots' records in one arena, made at the first late batch (its width sets the layout)."""

    def __init__(self, loops, n: int, runs_dtype: np.dtype) -> None:
        self.loops, self.n, self.run_size = loops, n, np.dtype(runs_dtype).itemsize
        self.raw = self.arena = self.layout = None
        self.start = 0
        self.scratch = np.empty(0, dtype=np.int64)

    def late(self, idx: np.ndarray, where: np.ndarray, lists: pa.Array, step: np.ndarray, epoch: np.ndarray,
             width: int, bounds: tuple[int, int]) -> tuple[int, int]:
        if self.arena is None:
            r = width // 2
            runs = max(6 * r, 16)  # after the totals (48 bits each), or the late step, epoch + 1 and mark
            n_early = runs + 2 * r * self.run_size
            size = _round_up(n_early + 3, 8)  # n_early (uint16), then the flag (uint8)
            self.layout = (size, runs, self.run_size, n_early, n_early + 2, r)
            # zero pages, touched as rows come; the records start on a 64-byte boundary (one cache
            # line each with the shim's sketch)
            self.raw = np.zeros(self.n * size + 64, dtype=np.uint8)
            self.start = -self.raw.ctypes.data % 64
            self.arena = self.raw[self.start:self.start + self.n * size]
        if len(self.scratch) < len(idx):
            self.scratch = np.empty(len(idx), dtype=np.int64)
        return self.loops.late_runs(self.arena, self.layout, idx, _rows(where), lists.offsets.to_numpy(),
                                    values(lists), step, epoch, self.scratch[:len(idx)], *bounds)

    def started(self) -> bool:
        return self.arena is not None

    def superseded(self, idx: np.ndarray, bounds: tuple[int, int], step: int) -> bool:
        """Whether every slot of `idx` (within `bounds`) holds a late presentation after `step`."""
        return self.loops.superseded(self.arena, self.layout, idx, *bounds, step)

    def settle(self) -> None:
        self.loops.settle(self.arena, self.layout)

    def early(self, idx: np.ndarray, where: np.ndarray, pos: pa.Array, loss: pa.Array, k: int,
              bounds: tuple[int, int]) -> tuple[int, int, int]:
        return self.loops.early_sums(self.arena, self.layout, idx, _rows(where), pos.offsets.to_numpy(),
                                     values(pos), loss.offsets.to_numpy(), values(loss), k, *bounds)

    def values(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(value of every slot, its validity, the largest count of early rows of a slot). The values
        are written over the start of the arena, which is then cut to them (no second array)."""
        if self.arena is None:
            return np.zeros(self.n), np.zeros(self.n, dtype=np.bool_), 0
        most = self.loops.best_values(self.arena, self.layout, float(SCALE))
        raw, self.raw, self.arena = self.raw, None, None
        raw.resize(self.start + 8 * self.n, refcheck=False)  # realloc: the tail is given back, the values stay
        out = raw[self.start:].view(np.float64)
        valid = ~np.isnan(out)
        out[~valid] = 0.0
        return out, valid, most


class Numpy:
    """One array per field (numpy's version)."""

    def __init__(self, n: int, runs_dtype: np.dtype) -> None:
        self.n, self.runs_dtype = n, runs_dtype
        self.last_step = np.full(n, NO_STEP, dtype=np.int64)
        self.last_epoch = np.full(n, NO_EPOCH, dtype=np.int32)
        self.mark = np.zeros(n, dtype=np.int32)  # finds a slot twice in one batch without sorting
        self.runs = self.totals = self.n_early = self.has_late = None

    def late(self, idx: np.ndarray, where: np.ndarray, lists: pa.Array, step: np.ndarray, epoch: np.ndarray,
             width: int, bounds: tuple[int, int]) -> tuple[int, int]:
        values, status = gathered(lists, where, width)
        if status != _OK:
            return -1, status
        if len(epoch) and (epoch.min() < 0 or epoch.max() >= np.iinfo(np.int32).max):  # as the compiled loop
            return -1, _OUT_OF_RANGE
        limits = np.iinfo(self.runs_dtype)
        if len(values) and (values.min() < limits.min or values.max() > limits.max):
            return -1, _OUT_OF_RANGE
        if self.runs is None:
            self.runs = np.zeros((self.n, width), dtype=self.runs_dtype)
        mark = self.mark
        mark[idx] = np.arange(len(idx))
        if (mark[idx] != np.arange(len(idx))).any():  # a sample twice in this batch: its largest row only
            order = np.lexsort((*values.T[::-1], epoch, step, idx))
            take = order[np.append(idx[order][1:] != idx[order][:-1], True)]
            idx, step, epoch, values = idx[take], step[take], epoch[take], values[take]
        later = _larger(step, epoch, values, self.last_step[idx], self.last_epoch[idx], self.runs[idx])
        i = idx[later]
        self.last_step[i], self.last_epoch[i], self.runs[i] = step[later], epoch[later], values[later]
        return -1, _OK

    def started(self) -> bool:
        return self.runs is not None

    def superseded(self, idx: np.ndarray, bounds: tuple[int, int], step: int) -> bool:
        if not len(idx) or idx.min() < bounds[0] or idx.max() > bounds[1]:
            return False
        return bool(((self.last_epoch[idx] != NO_EPOCH) & (self.last_step[idx] > step)).all())

    def settle(self) -> None:
        self.has_late = self.last_epoch != NO_EPOCH
        self.last_step = self.last_epoch = self.mark = None
        self.totals = np.zeros((self.n, self.runs.shape[1] // 2), dtype=np.int64)
        self.n_early = np.zeros(self.n, dtype=np.int32)

    def early(self, idx: np.ndarray, where: np.ndarray, pos: pa.Array, loss: pa.Array, k: int,
              bounds: tuple[int, int]) -> tuple[int, int, int]:
        pos_offsets, loss_offsets = pos.offsets.to_numpy(), loss.offsets.to_numpy()
        if (np.diff(pos_offsets)[where] != np.diff(loss_offsets)[where]).any():
            return -1, 0, _LISTS_DIFFER
        positions, status = gathered(pos, where, k)
        if status != _OK:
            return -1, 0, status
        losses, _ = gathered(loss, where, k)
        np.add.at(self.n_early, idx, 1)
        losses = losses.astype(np.float64)
        finite = np.isfinite(losses)
        if finite.any() and np.abs(losses[finite]).max() >= _LOSS_LIMIT:
            return -1, -1, _OK
        fixed = np.rint(np.where(finite, losses, 0.0) * SCALE).astype(np.int64)  # (m, k), 0 for the padding
        starts = self.runs[idx, 0::2].astype(np.int64)
        ends = starts + self.runs[idx, 1::2]  # (m, r): run j is [start, end), empty where length <= 0
        positions = positions.astype(np.int64)
        contributions = np.empty(starts.shape, dtype=np.int64)
        for j in range(starts.shape[1]):
            inside = (positions >= starts[:, j, None]) & (positions < ends[:, j, None])  # (m, k)
            contributions[:, j] = np.where(inside, fixed, 0).sum(axis=1)
        np.add.at(self.totals, idx, contributions)
        return -1, int(np.abs(fixed).max(initial=0)), _OK

    def values(self) -> tuple[np.ndarray, np.ndarray, int]:
        out = np.zeros(self.n)
        if self.totals is None:
            return out, np.zeros(self.n, dtype=np.bool_), 0
        valid = (self.n_early > 0) & self.has_late
        out[valid] = self.totals[valid].max(axis=1).astype(np.float64) / SCALE / self.n_early[valid]
        return out, valid, int(self.n_early.max(initial=0))


def _larger(step: np.ndarray, epoch: np.ndarray, values: np.ndarray, step_b: np.ndarray, epoch_b: np.ndarray,
            values_b: np.ndarray) -> np.ndarray:
    """Per row, whether (step, epoch, values) is larger than (step_b, epoch_b, values_b), the values
    (m, w) compared as lists, lexicographically: the definition's order of late presentations."""
    values, values_b = values.astype(np.int64), values_b.astype(np.int64)
    larger = step > step_b
    tied = step == step_b
    larger |= tied & (epoch > epoch_b)
    tied &= epoch == epoch_b
    differ = values != values_b
    first = differ.argmax(axis=1)  # the first position where they differ (0 where they do not)
    rows = np.arange(len(values))
    larger |= tied & differ.any(axis=1) & (values[rows, first] > values_b[rows, first])
    return larger


def _rows(where: np.ndarray | slice) -> np.ndarray:
    return _IDENTITY if where is ALL else where


def values(lists: pa.Array) -> np.ndarray:
    """A list array's values as numpy sees them, without a copy (the caller checked for nulls)."""
    return lists.values.to_numpy(zero_copy_only=False)


def gathered(lists: pa.Array, where: np.ndarray, width: int) -> tuple[np.ndarray | None, int]:
    """(The (m, width) values of the lists at batch positions `where`, a status): numpy's version
    gathers them; None, and the status, where one is not `width` long (`_OTHER_WIDTH`) or holds an
    integer beyond int32 (`_OUT_OF_RANGE`: positions and runs are compared as int32)."""
    offsets = lists.offsets.to_numpy()
    where = np.arange(len(offsets) - 1) if where is ALL else where
    starts = offsets[where]
    if ((offsets[where + 1] - starts) != width).any():
        return None, _OTHER_WIDTH
    found = values(lists)[starts[:, None] + np.arange(width)]
    if found.dtype.kind in "iu" and found.size and (found.min() < np.iinfo(np.int32).min
                                                    or found.max() > np.iinfo(np.int32).max):
        return None, _OUT_OF_RANGE
    return found, _OK


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
