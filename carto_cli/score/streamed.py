"""Scores made and written a chunk of samples at a time: `carto score`'s path where the compiled
dense kernel reduces the log in one pass.

The in-memory path (`local.dense_scores`) holds every score column of every sample, about 90 bytes
a sample (900 MB for 10M samples), before it writes them: half the peak memory of `carto score` on
10M samples, though little of its time (docs/benchmarks.md). Here only the dense
kernel's accumulators are held (`dense.accumulated`: 8 bytes a sample, and 4 or 8 per epoch), and:

1. `placement()` gives every sample's difficulty and memorization (`compiled.place`): all of them
   are needed before the first sample is placed, as the thresholds are quantiles;
2. `lazy()` is a LazyFrame over the score columns, made CHUNK samples at a time by
   `compiled.finish` as the writer pulls them (a Polars IO source, streamed by `sink_parquet`). A
   chunk's arrays are freed once it is written, and the next chunk's reuse their memory.

In both, the irregular samples (a repeat within an epoch, a gap between epochs: see `dense`) carry
the general path's values (`recount`, `state.finalize`'s rows), and the values of a memorization
signal (`signal`), when one was asked for, replace the memorization column, as `local.with_signal`
does in memory. The columns and their order are `local.score`'s, bit for bit
(tests/test_streamed.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from polars.io.plugins import register_io_source

from carto_cli.log import schema
from carto_cli.score import compiled, dense
from carto_cli.score.accumulators import MASK_BITS, N_BITS, Sums
from carto_cli.score.dense_columns import frame, replace_rows
from carto_cli.score.extract import Extracted

CHUNK = 1 << 18  # samples per chunk: about 24 MB of score columns; the writer holds a few at once


def applies(logset) -> bool:
    """Whether a log can be scored this way: the compiled extension is there and the dense kernel
    reduces the log in one pass (else `local.dense_scores` makes its passes in memory)."""
    return compiled.available() and dense.passes(logset) == 1


@dataclass
class StreamedScores:
    """The dense accumulators of a whole log, turned into scores on demand (see the module)."""

    sums: Sums
    first_id: int  # the sample at slot i is first_id + i
    unsigned: bool  # sample_id is UInt64 (else Int64)
    early_epochs: int
    never_learned: str
    recount: pl.DataFrame | None = None  # `finalize` rows of the irregular samples
    signal: pl.DataFrame | Extracted | None = None  # sample_id -> value, or by slot: replaces memorization
    _placed: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        """The rows reduced (after non-finite ones were dropped)."""
        return self.sums.rows

    def irregular_ids(self) -> np.ndarray:
        """The sample ids whose scores the caller must recount with the general path (`recount`)."""
        slots = np.flatnonzero(self._place()[4])
        dtype = np.uint64 if self.unsigned else np.int64
        return slots.astype(dtype) + dtype(self.first_id)

    def placement(self) -> pl.DataFrame:
        """difficulty and memorization of every sample (null where `local.score` has null), and of
        slots without a sample (both null): what `quadrants.resolve_thresholds` reads. Once: the
        arrays are handed over."""
        difficulty, difficulty_valid, memorization, memorization_valid, _ = self._place()
        self._placed = None
        if self.recount is not None and len(self.recount):
            slots = self._slots(self.recount[schema.SAMPLE_ID])
            for values, valid, name in ((difficulty, difficulty_valid, "difficulty"),
                                        (memorization, memorization_valid, "memorization")):
                column = self.recount[name]
                values[slots] = column.fill_null(0).to_numpy()
                valid[slots] = column.is_not_null().to_numpy()
        if self._by_slot():  # the signal's own arrays: read, never written
            memorization, memorization_valid = self.signal.values, self.signal.valid
        elif self.signal is not None:
            memorization_valid[:] = False
            slots = self._slots(self.signal[schema.SAMPLE_ID])
            memorization[slots] = self.signal["value"].fill_null(0).to_numpy()
            memorization_valid[slots] = self.signal["value"].is_not_null().to_numpy()
        return frame({"difficulty": (difficulty, difficulty_valid),
                            "memorization": (memorization, memorization_valid)}, self.unsigned)

    def frames(self) -> Iterator[pl.DataFrame]:
        """The score columns of the samples, CHUNK slots at a time, ascending by sample_id."""
        width = len(self.sums.words)
        signal = None if self.signal is None else _SlotLookup(self.signal, self.first_id) if self._by_slot() \
            else _SignalLookup(self.signal, self.unsigned)
        for lo in range(0, width, CHUNK):
            hi = min(lo + CHUNK, width)
            ranges, _, _ = compiled.survey(self.sums, n_bits=N_BITS, mask_bits=MASK_BITS,
                                           span=(lo, hi))
            if not ranges[0][2]:
                continue
            columns, irregular = compiled.finish(
                self.sums, ranges, n_bits=N_BITS, mask_bits=MASK_BITS,
                early_epochs=self.early_epochs, never_learned=self.never_learned, first_id=self.first_id, stride=1)
            if irregular.any():
                replace_rows(columns, self._recounted(lo, hi), self.unsigned)
            if signal is not None:
                columns["memorization"] = signal.at(columns[schema.SAMPLE_ID][0])
            yield frame(columns, self.unsigned)

    def lazy(self) -> pl.LazyFrame:
        """A LazyFrame over `frames()`: the columns are made as a sink or collect pulls them."""
        def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
                   batch_size: int | None) -> Iterator[pl.DataFrame]:
            left = n_rows
            for chunk in self.frames():
                if predicate is not None:
                    chunk = chunk.filter(predicate)
                if with_columns is not None:
                    chunk = chunk.select(with_columns)
                if left is not None:
                    chunk = chunk.head(left)
                    left -= chunk.height
                yield chunk
                if left == 0:
                    return

        empty = {name: (np.empty(0, dtype=dtype), None) for name, dtype, _ in compiled.OUTPUTS}
        return register_io_source(source, schema=frame(empty, self.unsigned).schema,
                                  explain_name="carto dense scores")

    def _by_slot(self) -> bool:
        """Whether the signal came by slot, over these very slots (`extract.Extracted`)."""
        return (isinstance(self.signal, Extracted) and self.signal.first_id == self.first_id
                and len(self.signal.values) == len(self.sums.words))

    def _place(self) -> tuple[np.ndarray, ...]:
        if self._placed is None:
            self._placed = compiled.place(self.sums, n_bits=N_BITS, mask_bits=MASK_BITS,
                                          early_epochs=self.early_epochs, never_learned=self.never_learned)
        return self._placed

    def _slots(self, ids: pl.Series) -> np.ndarray:
        ids = ids.to_numpy()
        return (ids - ids.dtype.type(self.first_id)).astype(np.int64)

    def _recounted(self, lo: int, hi: int) -> pl.DataFrame:
        """The recounted rows of the samples at slots [lo, hi)."""
        first, last = self.first_id + lo, self.first_id + hi - 1
        return self.recount.filter(pl.col(schema.SAMPLE_ID).is_between(first, last))


class _SlotLookup:
    """A signal's values by slot (`extract.Extracted`), looked up by sample id."""

    def __init__(self, signal: Extracted, first_id: int) -> None:
        self.signal = signal
        # the first id's int64 bits (a uint64 id of 2^63 or more wraps, as the ids below do)
        self.base = np.array([first_id & (2**64 - 1)], dtype=np.uint64).view(np.int64)[0]

    def at(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, validity) for `ids` (int64 bits, as `compiled.finish` writes sample_id)."""
        slots = ids - self.base
        return self.signal.values[slots], self.signal.valid[slots]


class _SignalLookup:
    """A signal's values (sample_id -> value) looked up by sample id, as `local.with_signal`'s left
    join gives them: null where the signal has no value for a sample."""

    def __init__(self, signal: pl.DataFrame, unsigned: bool) -> None:
        signal = signal.sort(schema.SAMPLE_ID)
        ids = signal[schema.SAMPLE_ID].to_numpy()
        self.ids = ids.astype(np.uint64 if unsigned else np.int64, copy=False)
        self.values = signal["value"].fill_null(0).cast(pl.Float64).to_numpy()
        self.valid = signal["value"].is_not_null().to_numpy()
        self.unsigned = unsigned

    def at(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, validity) for `ids` (int64 bits, as `compiled.finish` writes sample_id)."""
        ids = ids.view(np.uint64) if self.unsigned else ids
        if not len(self.ids):
            return np.zeros(len(ids)), np.zeros(len(ids), dtype=np.bool_)
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        found = self.ids[at] == ids
        return np.where(found, self.values[at], 0.0), found & self.valid[at]
