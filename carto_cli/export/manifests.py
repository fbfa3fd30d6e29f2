"""Exports for the next training run: prune manifests and per-sample weights.

Both are pure functions of a scores frame (one row per sample, as `carto score` writes it) and
return one row per sample, sorted by sample_id, so the same inputs always give the same file.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from carto_cli.errors import OptionError
from carto_cli.score import quadrants as q

PRUNE_BY = ("memorization", "quadrant", "difficulty", "random")

# Default multipliers per quadrant (GenDataCarto's suggested actions): keep stable-easy samples as
# they are, up-sample ambiguous-hard ones (gamma = 2), down-weight memorization hotspots
# (alpha = 0.5), drop noisy outliers (0). Unplaced samples keep weight 1.
DEFAULT_MULTIPLIERS = {
    q.STABLE_EASY: 1.0,
    q.AMBIGUOUS_HARD: 2.0,
    q.HOTSPOT: 0.5,
    q.NOISY_OUTLIER: 0.0,
    q.UNPLACED: 1.0,
}

# Pruning order of quadrants for `--by quadrant`: noisy outliers first, then hotspots.
_QUADRANT_ORDER = {q.NOISY_OUTLIER: 0, q.HOTSPOT: 1, q.AMBIGUOUS_HARD: 2, q.STABLE_EASY: 3}


def prune_count(n_samples: int, frac: float) -> int:
    """How many samples `frac` removes: floor(frac * n), so never more than the fraction asked."""
    if not (0 <= frac < 1) or math.isnan(frac):
        raise OptionError(f"--frac must be in [0, 1); got {frac}")
    return math.floor(frac * n_samples)


def prune_order(scores: pl.DataFrame, *, by: str = "memorization", seed: int = 0) -> pl.DataFrame:
    """`scores` sorted from first-to-prune to last, with a 0-based `prune_rank` column.

    - `memorization`: memorization desc, then forget_events desc (more evidence first), then
      difficulty asc (an easy sample that is forgotten is the hotspot pattern), then sample_id asc.
      Nulls (unplaced or excluded samples) last.
    - `quadrant`: noisy-outlier, hotspot-memorized, ambiguous-hard, stable-easy, unplaced; within a
      quadrant as `memorization`.
    - `difficulty`: difficulty desc (highest early loss first), then sample_id asc.
    - `random`: a permutation of the samples (sorted by sample_id) drawn with numpy's PCG64 and `seed`.
    """
    if by not in PRUNE_BY:
        raise OptionError(f"--by must be one of {', '.join(PRUNE_BY)}; got '{by}'")
    if by == "random":
        base = scores.sort("sample_id")
        order = pl.Series(np.random.default_rng(seed).permutation(base.height))
        return base.select(pl.all().gather(order)).with_row_index("prune_rank")
    memorization_keys = (
        ["memorization", "forget_events", "difficulty", "sample_id"],
        [True, True, False, False],
    )
    if by == "memorization":
        keys, descending = memorization_keys
    elif by == "quadrant":
        scores = scores.with_columns(
            _quadrant_order=pl.col("quadrant").replace_strict(_QUADRANT_ORDER, default=len(_QUADRANT_ORDER))
        )
        keys = ["_quadrant_order", *memorization_keys[0]]
        descending = [False, *memorization_keys[1]]
    else:
        keys, descending = ["difficulty", "sample_id"], [True, False]
    ranked = scores.sort(keys, descending=descending, nulls_last=True)
    return ranked.drop("_quadrant_order", strict=False).with_row_index("prune_rank")


def rankable(scores: pl.DataFrame, by: str) -> int:
    """How many samples `by` can rank: by memorization, those with a memorization; by quadrant,
    those placed in one. The others (unplaced, or excluded as never learned) have no evidence
    against them and are never pruned by these rankings; by difficulty or at random, every sample."""
    return scores.height - (scores[by].null_count() if by in ("memorization", "quadrant") else 0)


def prune_manifest(scores: pl.DataFrame, *, frac: float, by: str = "memorization", seed: int = 0) -> pl.DataFrame:
    """Every sample with `keep` (False for the `floor(frac * n)` first in `prune_order`, or fewer:
    at most the samples `by` can rank, see `rankable`)."""
    ranked = prune_order(scores, by=by, seed=seed)
    n_prune = min(prune_count(scores.height, frac), rankable(scores, by))
    return (
        ranked.with_columns(keep=pl.col("prune_rank") >= n_prune)
        .select("sample_id", "keep", "quadrant", "prune_rank")
        .with_columns(pl.col("prune_rank").cast(pl.Int64))
        .sort("sample_id")
    )


def has_findings(scores: pl.DataFrame) -> bool:
    """Whether the scores were placed by findings (`carto score --data`): a `finding` column."""
    return "finding" in scores.columns


def findings_manifest(scores: pl.DataFrame, *, frac: float | None = None) -> pl.DataFrame:
    """Every sample with `keep`: False for every carrier of a private finding (`carto score --data`),
    or, with `frac`, for at most floor(frac * n) of them, whole findings only, strongest first: a
    finding whose carriers do not all fit in what is left of the budget is kept whole, and the next
    one is tried (removing some copies of a string leaves the rest to teach it).

    A sample's `finding` is the strongest private finding it carries, so a finding's carriers not
    yet removed by a stronger one are exactly the samples that name it."""
    if not has_findings(scores):
        raise OptionError("these scores have no findings; score with `carto score --data TRAIN` to prune every "
                          "copy of what the model memorized, or pass --frac")
    budget = scores.height if frac is None else prune_count(scores.height, frac)
    sizes = (scores.filter(pl.col("finding").is_not_null())
             .group_by("finding").agg(pl.len().alias("carriers"), pl.col("memorization").max().alias("evidence"))
             .sort(["evidence", "finding"], descending=[True, False]))
    chosen, used = [], 0
    for finding, carriers in sizes.select("finding", "carriers").iter_rows():
        if used + carriers <= budget:
            chosen.append(finding)
            used += carriers
    ranked = prune_order(scores, by="memorization")
    chosen_ids = pl.Series("chosen", chosen, dtype=scores.schema["finding"])
    return (ranked.with_columns(keep=~pl.col("finding").is_in(chosen_ids.implode()).fill_null(False))
            .select("sample_id", "keep", "quadrant", pl.col("prune_rank").cast(pl.Int64), "finding")
            .sort("sample_id"))


def pruned_without_evidence(scores: pl.DataFrame, manifest: pl.DataFrame, *, forgets: bool = True) -> int:
    """How many pruned samples the tie-break picked, not the score: those with no forget event
    (memorization by forget events), or with a memorization of 0 (another signal)."""
    pruned = manifest.filter(~pl.col("keep")).select("sample_id")
    no_evidence = pl.col("forget_events") == 0 if forgets else pl.col("memorization") == 0
    return scores.join(pruned, on="sample_id", how="semi").filter(no_evidence).height


def sample_weights(scores: pl.DataFrame, multipliers: dict[str, float] | None = None) -> pl.DataFrame:
    """Per-sample `weight` = quadrant multiplier, normalised so the mean over all samples is 1."""
    mult = {**DEFAULT_MULTIPLIERS, **(multipliers or {})}
    for name, value in mult.items():
        if not (value >= 0 and math.isfinite(value)):
            raise OptionError(f"the multiplier for {name} must be a finite number >= 0; got {value}")
    raw = pl.col("quadrant").fill_null(q.UNPLACED).replace_strict(mult, return_dtype=pl.Float64)
    weighted = scores.select("sample_id", "quadrant", raw.alias("multiplier"))
    mean = weighted["multiplier"].mean() if weighted.height else 0.0
    if not mean:
        raise OptionError(
            "every sample would get weight 0 with these multipliers; raise at least one "
            "multiplier of a quadrant that has samples"
        )
    return weighted.with_columns(weight=pl.col("multiplier") / mean).select(
        "sample_id", "weight", "quadrant", "multiplier"
    ).sort("sample_id")
