"""The dense kernel's loops, compiled (a small C extension, `_dense.c`).

`carto_cli.score.dense` reduces a log a row group at a time into arrays indexed by sample slot (the
epoch masks and row counts, one packed word per sample or three arrays, and a loss matrix (epoch,
slot)), then turns them into scores. Its numpy version does the first with `np.add.at` and
fancy-index stores, and the second with whole-array temporaries and Polars expressions: a dozen
fresh arrays of 10M elements for 10M samples, and on a virtual machine faulting in fresh memory
costs more than the arithmetic. The C loops do the same integer and floating-point operations
without temporaries:

- `add_rows`: for each row, the packed word (or the three fields) of its slot += the row's
  contribution, and loss matrix[epoch, slot] = its loss (and the first and last step, full state);
- `survey`: per range of slots, how many were seen, the largest row count and the packed fields'
  totals (the numpy version's overflow check);
- `finish`: per seen slot, the loss sums and exact sums of p over the loss matrix and, from them,
  every score column as `state.finalize` computes it (same operations, same order, no fused
  multiply-add, the variance's numerator in 128-bit integers), written straight into the arrays
  the scores frame is made of. Two threads take half of the slots each (the GIL is released);
- `place`: per slot, difficulty and memorization only, as `finish` computes them (the quadrant
  thresholds of `carto_cli.score.streamed`, before the chunks are finished).

Integer sums do not depend on the order of the rows, so the results are the numpy version's and the
Polars kernels', bit for bit (tests/test_compiled.py).

The extension is built by `pip install` where a C compiler with 128-bit integers is present
(gcc, clang; `setup.py`, optional: a failed build leaves the numpy version). `available()` is
False without it, or with `CARTO_NO_COMPILED=1`; the dense kernel then runs its numpy version, with
the same results. `extract_loops()` is the same for the `extractable` signal's loops (`_extract.c`,
used by `carto_cli.score.extract`), and `match_loops()` for the findings' token search (`_match.c`,
used by `carto_cli.score.match`).
"""

from __future__ import annotations

import functools
import importlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from carto_cli.score.fixedpoint import SCALE
from carto_cli.score.state import PROB_SCALE, SQ_SPLIT, prob_table, prob_units_parameters

THREADS = 2
NEVER_LEARNED = {"zero": 0, "max": 1, "exclude": 2}  # the codes `finish` takes
# The score columns `finish` writes, in its argument order: (name, dtype, has a validity array).
OUTPUTS = (
    ("sample_id", np.int64, False),
    ("difficulty", np.float64, True),
    ("memorization", np.float64, True),
    ("forget_events", np.int64, False),
    ("n_seen", np.int64, False),
    ("n_correct", np.int64, False),
    ("ever_learned", np.bool_, False),
    ("first_learned_epoch", np.int64, True),
    ("mean_loss", np.float64, False),
    ("confidence", np.float64, False),
    ("variability", np.float64, False),
    ("correctness", np.float64, False),
)
_NONE = np.empty(0, dtype=np.int64)


@functools.cache
def _built(name: str):
    """The extension module `carto_cli.score.<name>`, or None where pip did not build it."""
    try:
        return importlib.import_module(f"carto_cli.score.{name}")
    except ImportError:
        return None


def _extension():
    return _built("_dense")


def available() -> bool:
    """Whether the compiled loops run here (the extension was built, and not turned off)."""
    return not os.environ.get("CARTO_NO_COMPILED") and _extension() is not None


def extract_loops():
    """The `extractable` signal's compiled loops (`_extract.c`, used by `carto_cli.score.extract`),
    or None where they were not built or `CARTO_NO_COMPILED` is set."""
    return None if os.environ.get("CARTO_NO_COMPILED") else _built("_extract")


class _MatchLoops:
    """`_match.find` with its result as numpy arrays: the C function returns one bytearray of 3 * h
    int64 (it is built without numpy's headers), viewed here without a copy."""

    def __init__(self, module) -> None:
        self._module = module

    def find(self, values: np.ndarray, offsets: np.ndarray, flat: np.ndarray, starts: np.ndarray,
             lengths: np.ndarray, sorted_hashes: np.ndarray, order: np.ndarray, anchor: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pattern, row, pos), int64, sorted by (pattern, row, pos): every occurrence of every
        pattern in the rows `values[offsets[i]:offsets[i + 1]]` (see `_match.c` for the arguments);
        ValueError for inputs the loop cannot search safely."""
        buffer, h = self._module.find(values, offsets, flat, starts, lengths, sorted_hashes, order, int(anchor))
        hits = np.frombuffer(buffer, dtype=np.int64).reshape(3, h)
        return hits[0], hits[1], hits[2]


def match_loops() -> _MatchLoops | None:
    """The multi-pattern token search's compiled loop (`_match.c`, used by `carto_cli.score.match`),
    or None where it was not built or `CARTO_NO_COMPILED` is set."""
    if os.environ.get("CARTO_NO_COMPILED"):
        return None
    module = _built("_match")
    return None if module is None else _MatchLoops(module)


def add_rows(sums, idx: np.ndarray, epoch: np.ndarray | int, loss: np.ndarray, correct: np.ndarray,
             step: np.ndarray | None, *, n_bits: int, mask_bits: int, bounds: tuple[int, int]) -> int:
    """The rows (filtered by `dense._accumulate`) into the packed words or the three fields, the
    loss matrix and the steps of `sums` (an `accumulators.Sums`, its matrix already grown to the
    rows' epochs). -1, or the position of the first row whose slot lies outside `bounds` (lo, hi)
    or whose epoch has no row of the loss matrix: the loop checks every row and stops there."""
    many = isinstance(epoch, np.ndarray)
    full = sums.first_step is not None
    return _extension().add_rows(
        sums.words.view(np.int64), _NONE if sums.packed else sums.n_seen,
        _NONE if sums.packed else sums.corr.view(np.int64), sums.losses, sums.first_epoch, sums.packed, n_bits,
        mask_bits, np.ascontiguousarray(idx, dtype=np.int64),
        np.ascontiguousarray(epoch, dtype=np.int64) if many else _NONE, 0 if many else int(epoch),
        np.ascontiguousarray(loss), np.ascontiguousarray(correct, dtype=np.bool_),
        np.ascontiguousarray(step, dtype=np.int64) if full else _NONE,
        sums.first_step if full else _NONE, sums.last_step if full else _NONE, bounds[0], bounds[1])


def _fields(sums) -> tuple:
    return (sums.words, _NONE if sums.packed else sums.n_seen, _NONE if sums.packed else sums.corr)


def _ranges(width: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, width, THREADS + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="carto-dense")


def _map(function, calls: list[tuple]) -> list:
    """`function(*args)` for each args in `calls`, on the pool (the C functions release the GIL)."""
    if len(calls) == 1:
        return [function(*calls[0])]
    return [job.result() for job in [_pool().submit(function, *args) for args in calls]]


def survey(sums, *, n_bits: int, mask_bits: int, span: tuple[int, int] | None = None
           ) -> tuple[list[tuple[int, int, int]], int, tuple[int, int, int]]:
    """((lo, hi, seen slots) per range of slots, the largest row count, (sum of n, of the seen
    masks, of the correct masks)) of `sums`, or of its slots [lo, hi) of `span` in one range."""
    ranges = _ranges(len(sums.words)) if span is None else [span]
    found = _map(_extension().survey, [(*_fields(sums), sums.packed, n_bits, mask_bits, lo, hi) for lo, hi in ranges])
    totals = tuple(sum(f[i] for f in found) for i in (2, 3, 4))
    return [(lo, hi, f[0]) for (lo, hi), f in zip(ranges, found)], max((f[1] for f in found), default=0), totals


def place(sums, *, n_bits: int, mask_bits: int, early_epochs: int, never_learned: str
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(difficulty, its validity, memorization, its validity, irregular flag) of every slot of
    `sums`, as `finish` gives them for the seen slots (unseen ones: invalid, not irregular)."""
    width = len(sums.words)
    difficulty, memorization = np.empty(width), np.empty(width)
    difficulty_valid, memorization_valid, irregular = (np.empty(width, dtype=np.bool_) for _ in range(3))
    _map(_extension().place, [
        (*_fields(sums), sums.packed, n_bits, mask_bits, sums.losses, sums.first_epoch, early_epochs, float(SCALE),
         NEVER_LEARNED[never_learned], lo, hi, difficulty[lo:hi], difficulty_valid[lo:hi], memorization[lo:hi],
         memorization_valid[lo:hi], irregular[lo:hi])
        for lo, hi in _ranges(width)])
    return difficulty, difficulty_valid, memorization, memorization_valid, irregular


def finish(sums, ranges: list[tuple[int, int, int]], *, n_bits: int, mask_bits: int, early_epochs: int,
           never_learned: str, first_id: int, stride: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]],
                                                                      np.ndarray]:
    """The score columns of every seen slot of `sums` ({name: (values, validity or None)}, in
    OUTPUTS, sample_id as int64 bits) and a flag per row for the samples that break the bitmask
    conditions (their values are provisional: the caller recounts them). `ranges`: from `survey`."""
    total = sum(count for _, _, count in ranges)
    columns = {name: (np.empty(total, dtype=dtype), np.empty(total, dtype=np.bool_) if valid else None)
               for name, dtype, valid in OUTPUTS}
    irregular = np.empty(total, dtype=np.bool_)
    outputs = [array for values, valid in columns.values() for array in (values, valid) if array is not None]
    step_bits, max_fixed, c1, c2, c3 = prob_units_parameters()
    calls, at = [], 0
    for lo, hi, count in ranges:
        calls.append((*_fields(sums), sums.packed, n_bits, mask_bits, sums.losses, sums.first_epoch, early_epochs,
                      prob_table(), step_bits, max_fixed, c1, c2, c3, float(SCALE), float(PROB_SCALE),
                      SQ_SPLIT.bit_length() - 1, NEVER_LEARNED[never_learned], first_id & (2**64 - 1), stride,
                      lo, hi, at, *outputs, irregular))
        at += count
    written = _map(_extension().finish, calls)
    assert written == [count for _, _, count in ranges], "finish wrote another number of rows than survey counted"
    return columns, irregular
