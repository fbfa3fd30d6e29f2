"""The dense kernel's two per-row loops, compiled (a small C extension, `_dense.c`), on two threads.

`carto_cli.score.dense` reduces a log a row group at a time into arrays indexed by sample slot:
the epoch masks and row counts (one packed word per sample, or three arrays) and a loss matrix
(epoch, slot). Its numpy version does this with `np.add.at` (a scatter-add) and fancy-index
stores, then sums the loss matrix in blocks with whole-array temporaries. The C loops do exactly
the same integer and floating-point operations, in one pass each, without temporaries:

- `add_rows`: for each row, the packed word (or the three fields) of its slot += the row's
  contribution, and loss matrix[epoch, slot] = its loss (and the first and last step, full state);
- `loss_sums`: for each slot, over the matrix's epochs, the fixed-point loss sums (early epochs and
  the others) and the exact sums of p units and their squares (`state.prob_units`: the same
  floating-point operations in the same order, no fused multiply-add, so the same bits; tested
  against the numpy version and the Polars kernels).

Integer sums do not depend on the order of the rows, so the results are the numpy version's, bit
for bit. The loops release the GIL; THREADS threads split the slots (each reads every row and
writes only its own slots, so no lock is needed).

The extension is built by `pip install` where a C compiler is present (`setup.py`; optional: a
failed build leaves the numpy version). `available()` is False without it, or with
`CARTO_NO_COMPILED=1`; the dense kernel then runs its numpy version, with the same results.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from carto_cli.score.fixedpoint import SCALE
from carto_cli.score.state import prob_table, prob_units_parameters

THREADS = 2
_NONE = np.empty(0, dtype=np.int64)


@functools.cache
def _extension():
    try:
        from carto_cli.score import _dense
    except ImportError:
        return None
    return _dense


def available() -> bool:
    """Whether the compiled loops run here (the extension was built, and not turned off)."""
    return not os.environ.get("CARTO_NO_COMPILED") and _extension() is not None


def _slices(width: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, width, THREADS + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="carto-dense")


def _run(function, width: int, *args) -> None:
    """`function(*args, lo, hi)` for THREADS slices [lo, hi) of the slots, at once."""
    slices = _slices(width)
    if len(slices) == 1:
        function(*args, *slices[0])
        return
    for job in [_pool().submit(function, *args, lo, hi) for lo, hi in slices]:
        job.result()


def add_rows(sums, idx: np.ndarray, epoch: np.ndarray | int, loss: np.ndarray, correct: np.ndarray,
             step: np.ndarray | None, *, n_bits: int, mask_bits: int) -> None:
    """The rows (already checked and filtered by `dense._pass`) into the packed words or the three
    fields, the loss matrix and the steps of `sums` (a `dense._Sums`)."""
    many = isinstance(epoch, np.ndarray)
    full = sums.first_step is not None
    _run(_extension().add_rows, len(sums.words), sums.words.view(np.int64),
         _NONE if sums.packed else sums.n_seen, _NONE if sums.packed else sums.corr.view(np.int64),
         sums.losses, sums.first_epoch, sums.packed, n_bits, mask_bits,
         np.ascontiguousarray(idx, dtype=np.int64), np.ascontiguousarray(epoch, dtype=np.int64) if many else _NONE,
         0 if many else int(epoch), np.ascontiguousarray(loss),
         np.ascontiguousarray(correct, dtype=np.bool_), np.ascontiguousarray(step, dtype=np.int64) if full else _NONE,
         sums.first_step if full else _NONE, sums.last_step if full else _NONE)


def loss_sums(losses: np.ndarray, first_epoch: int, masks: np.ndarray, early_epochs: int,
              sums: dict[str, np.ndarray]) -> None:
    """Adds into sums' early_sum, late, prob_sum, prob_sq_hi and prob_sq_lo (zeros on entry) what
    `dense._Sums.loss_sums`'s block loop adds; the caller normalises the squares."""
    step_bits, max_fixed, c1, c2, c3 = prob_units_parameters()
    _run(_extension().loss_sums, losses.shape[1], np.ascontiguousarray(losses), first_epoch,
         np.ascontiguousarray(masks, dtype=np.int64), early_epochs, prob_table(), sums["early_sum"], sums["late"],
         sums["prob_sum"], sums["prob_sq_hi"], sums["prob_sq_lo"], step_bits, max_fixed, c1, c2, c3, float(SCALE))
