"""Fixed-point sums: how carto makes every mean independent of summation order.

Losses are summed in units of 2^-32 nats (far below float32's resolution), rounded half to even,
as integers, so a mean does not depend on the order in which files, threads and row groups were
summed: the same logs always give bit-identical scores, and quadrant boundaries never flip on
rounding noise. The Polars kernels sum in Int128 (`fixed_sum`, `fixed_mean`); the dense kernel
(`carto_cli.score.dense`) sums the same integers in int64 arrays (bounded so they cannot wrap).
"""

from __future__ import annotations

import polars as pl

SCALE = 2.0**32  # units per nat


def fixed_sum(values: pl.Expr, *, strict: bool = True) -> pl.Expr:
    """Exact, order-independent sum of a float column, in units of 1/SCALE (Int64; 0 for no values).
    A sum beyond Int64 fails the query, or with `strict=False` is null (for the caller to report)."""
    return (values * SCALE).round().cast(pl.Int128).sum().cast(pl.Int64, strict=strict)


def fixed_mean(values: pl.Expr) -> pl.Expr:
    """Order-independent mean of the non-null values (Float64; null for none)."""
    total = (values * SCALE).round().cast(pl.Int128).sum().cast(pl.Float64) / SCALE
    return pl.when(values.count() > 0).then(total / values.count())
