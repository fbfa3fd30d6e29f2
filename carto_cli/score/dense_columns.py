"""The dense kernel's outputs as frames: per-slot sums to per-sample state (`derive_state`, the
numpy version), score arrays to a Polars frame without copying them (`frame`), and the irregular
samples' rows replaced by the general path's (`replace_rows`). See `carto_cli.score.dense`.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from carto_cli.log import schema
from carto_cli.score.accumulators import u64
from carto_cli.score.state import STATE_COLUMNS, power_of_two

# The state columns `state.finalize` reads.
COLUMNS = ("sample_id", "n_seen", "n_correct", "n_early", "loss_sum", "early_sum", "first_learned_epoch",
           "forget_events", "prob_sum", "prob_sq_hi", "prob_sq_lo")


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


def derive_state(fields: pl.DataFrame, early_epochs: int, first_id: int, stride: int, unsigned: bool,
            full: bool = False) -> tuple[pl.DataFrame, np.ndarray]:
    """State columns (COLUMNS, or with `full` every state column) of the regular samples present,
    from the per-slot sums; ids of the irregular ones, for the general path to recount."""
    n, seen, corr = pl.col("n_seen"), pl.col("seen"), pl.col("corr")
    dtype = pl.UInt64 if unsigned else pl.Int64
    first_epoch = seen.bitwise_trailing_zeros().cast(pl.Int64)
    last_epoch = 63 - seen.bitwise_leading_zeros().cast(pl.Int64)
    # Once per epoch (a repeat carries, so the popcount falls short) in consecutive epochs.
    regular = (seen.bitwise_count_ones().cast(pl.Int64) == n) & (n == last_epoch - first_epoch + 1)
    early_mask = u64((1 << min(early_epochs, 64)) - 1)
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
            forget_events=(corr & ~(corr // u64(2)) & (seen // u64(2))).bitwise_count_ones().cast(pl.Int64),
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
