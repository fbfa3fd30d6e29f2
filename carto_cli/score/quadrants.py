"""Quadrants: split samples by (difficulty, memorization) thresholds (GenDataCarto, Sec. "data map").

| quadrant          | difficulty | memorization | suggested action          |
|-------------------|------------|--------------|---------------------------|
| stable-easy       | low        | low          | keep                      |
| ambiguous-hard    | high       | low          | up-weight (gamma > 1)     |
| hotspot-memorized | low        | high         | down-weight (alpha < 1)   |
| noisy-outlier     | high       | high         | prune                     |

"High" means strictly above the threshold. By default each threshold is a quantile of the scored
samples' values (`nearest` interpolation, so it is a value that occurs); an absolute threshold
overrides it. With many samples at memorization 0 the median is 0 and "high memorization" means
"at least one forget event". A sample with a null difficulty (no early presentation) or a null
memorization (`--never-learned exclude`) gets no quadrant (null): it is counted as `unplaced`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from carto_cli.errors import OptionError

STABLE_EASY = "stable-easy"
AMBIGUOUS_HARD = "ambiguous-hard"
HOTSPOT = "hotspot-memorized"
NOISY_OUTLIER = "noisy-outlier"
UNPLACED = "unplaced"  # label used in summaries for samples with a null quadrant

QUADRANTS = (STABLE_EASY, AMBIGUOUS_HARD, HOTSPOT, NOISY_OUTLIER)
ACTIONS = {
    STABLE_EASY: "keep",
    AMBIGUOUS_HARD: "up-weight",
    HOTSPOT: "down-weight",
    NOISY_OUTLIER: "prune",
    UNPLACED: "keep",
}
QUADRANT_DTYPE = pl.String  # plain strings in files: readable by any Parquet reader


@dataclass(frozen=True)
class Thresholds:
    difficulty: float | None
    memorization: float | None
    difficulty_quantile: float | None
    memorization_quantile: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "difficulty": self.difficulty,
            "memorization": self.memorization,
            "difficulty_quantile": self.difficulty_quantile,
            "memorization_quantile": self.memorization_quantile,
        }


def resolve_thresholds(
    scores: pl.DataFrame | pl.LazyFrame,
    *,
    difficulty_quantile: float = 0.5,
    memorization_quantile: float = 0.5,
    difficulty_threshold: float | None = None,
    memorization_threshold: float | None = None,
) -> Thresholds:
    """Absolute thresholds where given, else quantiles over the samples that can be placed."""
    for name, q in (("--d-quantile", difficulty_quantile), ("--m-quantile", memorization_quantile)):
        if not 0 <= q <= 1:
            raise OptionError(f"{name} must be in [0, 1]; got {q}")
    wanted = {}
    if difficulty_threshold is None:
        wanted["difficulty"] = difficulty_quantile
    if memorization_threshold is None:
        wanted["memorization"] = memorization_quantile
    placed = pl.col("difficulty").is_not_null() & pl.col("memorization").is_not_null()
    if isinstance(scores, pl.DataFrame):
        # a frame in memory: each column's quantile in turn, on the frame itself when it has no
        # null (Polars' lazy default, the streaming engine, takes several times as long)
        nulls = scores.select(pl.col("difficulty", "memorization").null_count()).row(0)
        placeable = scores if nulls == (0, 0) else scores.filter(placed)
        found = {column: placeable[column].quantile(q, interpolation="nearest") for column, q in wanted.items()}
    else:
        quantiles = {column: pl.col(column).quantile(q, interpolation="nearest") for column, q in wanted.items()}
        found = scores.filter(placed).select(**quantiles).collect().row(0, named=True) if wanted else {}

    def value(column: str, absolute: float | None) -> float | None:
        if absolute is not None:
            return float(absolute)
        return None if found[column] is None else float(found[column])

    return Thresholds(
        value("difficulty", difficulty_threshold),
        value("memorization", memorization_threshold),
        None if difficulty_threshold is not None else difficulty_quantile,
        None if memorization_threshold is not None else memorization_quantile,
    )


def assign(scores: pl.DataFrame | pl.LazyFrame, thresholds: Thresholds) -> pl.DataFrame | pl.LazyFrame:
    """Add a `quadrant` column (null for samples that cannot be placed)."""
    names = {name: pl.lit(name) for name in QUADRANTS}
    return scores.with_columns(quadrant=_each_quadrant(thresholds, names).cast(QUADRANT_DTYPE))


def codes(thresholds: Thresholds) -> pl.Expr:
    """The quadrant `assign` gives, as its index in QUADRANTS (UInt8; null where unplaced), without
    making a string per sample."""
    return _each_quadrant(thresholds, {name: i for i, name in enumerate(QUADRANTS)}).cast(pl.UInt8)


def _each_quadrant(thresholds: Thresholds, values: dict[str, object]) -> pl.Expr:
    """`values[q]` for the samples of quadrant q, null for those that cannot be placed: the one
    place where the quadrants' conditions are written."""
    if thresholds.difficulty is None or thresholds.memorization is None:
        return pl.lit(None)
    high_d = pl.col("difficulty") > thresholds.difficulty
    high_m = pl.col("memorization") > thresholds.memorization
    return (
        pl.when(pl.col("difficulty").is_null() | pl.col("memorization").is_null())
        .then(None)
        .when(high_d & high_m)
        .then(values[NOISY_OUTLIER])
        .when(high_d)
        .then(values[AMBIGUOUS_HARD])
        .when(high_m)
        .then(values[HOTSPOT])
        .otherwise(values[STABLE_EASY])
    )


def summary(scores: pl.DataFrame | pl.LazyFrame, thresholds: Thresholds | None = None) -> list[dict[str, object]]:
    """One row per quadrant (plus `unplaced` when any): samples, share, mean scores, action. With
    `thresholds`, the quadrants are those `assign` gives with them (counted without the quadrant
    column), else the `quadrant` column's."""
    key = pl.col("quadrant").fill_null(UNPLACED) if thresholds is None else codes(thresholds)
    counts = (
        scores.lazy()
        .group_by(key.alias("quadrant"))
        .agg(
            pl.len().alias("samples"),
            pl.col("difficulty").mean().alias("mean_difficulty"),
            pl.col("memorization").mean().alias("mean_memorization"),
            pl.col("forget_events").mean().alias("mean_forget_events"),
        )
        .collect()
    )
    total = int(counts["samples"].sum())

    def name(key: str | int | None) -> str:  # a quadrant's name, or its code (None: unplaced)
        return key if isinstance(key, str) else UNPLACED if key is None else QUADRANTS[key]

    by_name = {name(row["quadrant"]): row for row in counts.iter_rows(named=True)}
    rows = []
    for name in (*QUADRANTS, UNPLACED):
        row = by_name.get(name)
        if name == UNPLACED and not (row and row["samples"]):  # (a literal key groups an empty frame too)
            continue
        samples = row["samples"] if row else 0
        rows.append(
            {
                "quadrant": name,
                "samples": samples,
                "share": samples / total if total else 0.0,
                "mean_difficulty": row["mean_difficulty"] if row else None,
                "mean_memorization": row["mean_memorization"] if row else None,
                "mean_forget_events": row["mean_forget_events"] if row else None,
                "action": ACTIONS[name],
            }
        )
    return rows
