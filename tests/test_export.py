"""Quadrants, prune manifests and weights: invariants (Hypothesis) and documented tie-breaking."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carto_cli.errors import OptionError
from carto_cli.export import manifests as export
from carto_cli.score import quadrants


def scores_frame(rows: list[tuple]) -> pl.DataFrame:
    """rows of (difficulty, memorization, forget_events); sample_id is the position."""
    return pl.DataFrame(
        {
            "sample_id": list(range(len(rows))),
            "difficulty": [r[0] for r in rows],
            "memorization": [r[1] for r in rows],
            "forget_events": [r[2] for r in rows],
        },
        schema={"sample_id": pl.Int64, "difficulty": pl.Float64, "memorization": pl.Float64,
                "forget_events": pl.Int64},
    )


maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
score_rows = st.lists(
    st.tuples(maybe(st.floats(0, 10)), maybe(st.floats(0, 1)), st.integers(0, 5)), min_size=0, max_size=40
)


@settings(max_examples=100, deadline=None)
@given(rows=score_rows, dq=st.floats(0, 1), mq=st.floats(0, 1))
def test_thresholds_of_a_frame_in_memory_are_those_of_the_lazy_query(rows, dq, mq) -> None:
    """A frame in memory takes its quantiles with Polars' in-memory engine, a LazyFrame (a spilled
    bucketed run) with its default: the same values, nearest-rank, over the placeable samples."""
    scores = scores_frame(rows)
    eager = quadrants.resolve_thresholds(scores, difficulty_quantile=dq, memorization_quantile=mq)
    lazy = quadrants.resolve_thresholds(scores.lazy(), difficulty_quantile=dq, memorization_quantile=mq)
    assert eager == lazy
    placeable = scores.drop_nulls(["difficulty", "memorization"])
    if placeable.height:  # the value at rank round(q (n - 1)), halves up: one of the samples' own
        at = dq * (placeable.height - 1)
        rank = int(at) + (at - int(at) >= 0.5)
        assert eager.difficulty == placeable["difficulty"].sort()[rank]
    else:
        assert eager.difficulty is None and eager.memorization is None


@settings(max_examples=100, deadline=None)
@given(rows=score_rows, dq=st.floats(0, 1), mq=st.floats(0, 1))
def test_quadrants_partition_the_placeable_samples(rows, dq, mq) -> None:
    scores = scores_frame(rows)
    t = quadrants.resolve_thresholds(scores, difficulty_quantile=dq, memorization_quantile=mq)
    placed = quadrants.assign(scores, t)
    assert placed.height == scores.height
    placeable = placed.filter(pl.col("difficulty").is_not_null() & pl.col("memorization").is_not_null())
    assert placeable["quadrant"].null_count() == 0
    assert set(placeable["quadrant"]) <= set(quadrants.QUADRANTS)
    unplaceable = placed.height - placeable.height
    assert placed["quadrant"].null_count() == unplaceable
    table = quadrants.summary(placed)
    assert sum(r["samples"] for r in table) == scores.height
    # counted from the thresholds (no quadrant column, as `carto score` counts): the same table
    # (the means of floats within the last bits: Polars' float mean depends on its grouping)
    by_codes = quadrants.summary(scores, t)
    assert [(r["quadrant"], r["samples"], r["share"]) for r in by_codes] == \
        [(r["quadrant"], r["samples"], r["share"]) for r in table]
    for a, b in zip(by_codes, table):
        for key in ("mean_difficulty", "mean_memorization", "mean_forget_events"):
            assert (a[key] is None) == (b[key] is None) and (a[key] is None or math.isclose(a[key], b[key])), key
    if scores.height:
        assert math.isclose(sum(r["share"] for r in table), 1.0)
    for row in placed.filter(pl.col("quadrant").is_not_null()).iter_rows(named=True):
        high_d, high_m = row["difficulty"] > t.difficulty, row["memorization"] > t.memorization
        expected = {(False, False): quadrants.STABLE_EASY, (True, False): quadrants.AMBIGUOUS_HARD,
                    (False, True): quadrants.HOTSPOT, (True, True): quadrants.NOISY_OUTLIER}
        assert row["quadrant"] == expected[(high_d, high_m)]


def test_absolute_thresholds_override_quantiles() -> None:
    scores = scores_frame([(1.0, 0.0, 0), (2.0, 0.5, 1), (3.0, 1.0, 1)])
    t = quadrants.resolve_thresholds(scores, difficulty_threshold=2.5, memorization_threshold=0.25)
    assert (t.difficulty, t.memorization, t.difficulty_quantile) == (2.5, 0.25, None)
    placed = quadrants.assign(scores, t)
    assert placed["quadrant"].to_list() == [quadrants.STABLE_EASY, quadrants.HOTSPOT, quadrants.NOISY_OUTLIER]


@settings(max_examples=100, deadline=None)
@given(rows=score_rows, frac=st.floats(0, 0.999), by=st.sampled_from(export.PRUNE_BY), seed=st.integers(0, 99))
def test_prune_removes_floor_frac_and_keeps_every_sample_listed(rows, frac, by, seed) -> None:
    scores = quadrants.assign(scores_frame(rows), quadrants.resolve_thresholds(scores_frame(rows)))
    manifest = export.prune_manifest(scores, frac=frac, by=by, seed=seed)
    assert manifest["sample_id"].to_list() == list(range(len(rows)))
    # floor(frac * n), or every sample the ranking can rank when fewer (see the next test)
    assert int((~manifest["keep"]).sum()) == min(math.floor(frac * len(rows)), export.rankable(scores, by))
    assert sorted(manifest["prune_rank"].to_list()) == list(range(len(rows)))
    again = export.prune_manifest(scores, frac=frac, by=by, seed=seed)
    assert again.equals(manifest)


def test_samples_with_no_memorization_are_never_pruned_by_memorization_or_quadrant() -> None:
    """A sample with a null memorization (unplaced: no late presentation, or excluded as never
    learned) has no evidence against it: pruning by memorization or by quadrant stops before it,
    even if --frac asks for more; by difficulty or at random it is a sample like the others."""
    frame = scores_frame([(1.0, 0.9, 1), (2.0, None, 0), (3.0, None, 0), (0.5, 0.1, 0)])
    scores = quadrants.assign(frame, quadrants.resolve_thresholds(frame))
    for by in ("memorization", "quadrant"):
        manifest = export.prune_manifest(scores, frac=0.75, by=by)  # asks for 3; 2 can be ranked
        assert export.rankable(scores, by) == 2
        assert manifest.filter(~pl.col("keep"))["sample_id"].sort().to_list() == [0, 3], by
    assert int((~export.prune_manifest(scores, frac=0.75, by="difficulty")["keep"]).sum()) == 3
    assert int((~export.prune_manifest(scores, frac=0.75, by="random")["keep"]).sum()) == 3


def test_prune_zero_keeps_all() -> None:
    frame = scores_frame([(1.0, 1.0, 1)] * 5)
    scores = quadrants.assign(frame, quadrants.resolve_thresholds(frame))
    assert export.prune_manifest(scores, frac=0.0)["keep"].all()


def test_memorization_ranking_tie_breaks() -> None:
    # id: (difficulty, memorization, forget_events)
    scores = scores_frame([
        (1.0, 0.5, 1),   # 0
        (1.0, 0.5, 2),   # 1: same rate, more forget events -> before 0
        (0.5, 0.5, 1),   # 2: same rate and events as 0, easier -> before 0
        (None, 0.9, 1),  # 3: highest rate -> first even without a difficulty
        (2.0, None, 0),  # 4: excluded (null memorization) -> last
        (2.0, 0.0, 0),   # 5
    ])
    order = export.prune_order(scores, by="memorization")["sample_id"].to_list()
    assert order == [3, 1, 2, 0, 5, 4]


def test_quadrant_ranking_prunes_outliers_then_hotspots() -> None:
    scores = scores_frame([(0.1, 0.0, 0), (0.1, 0.9, 2), (9.0, 0.0, 0), (9.0, 0.8, 2)])
    thresholds = quadrants.resolve_thresholds(scores, difficulty_threshold=1, memorization_threshold=0.5)
    scores = quadrants.assign(scores, thresholds)
    order = export.prune_order(scores, by="quadrant")["sample_id"].to_list()
    assert order == [3, 1, 2, 0]


def test_difficulty_ranking_prunes_the_highest_early_loss_first() -> None:
    # id: (difficulty, memorization, forget_events); memorization plays no part in this ranking
    scores = scores_frame([
        (1.0, 0.9, 3),   # 0
        (3.0, 0.0, 0),   # 1: hardest, tied with 4 -> the lower sample_id first
        (None, 1.0, 5),  # 2: no early presentation (null difficulty) -> after every placed sample
        (2.0, 0.1, 1),   # 3
        (3.0, 0.5, 2),   # 4
        (0.5, None, 0),  # 5: easiest with a difficulty (a null memorization does not matter here)
        (None, 0.0, 0),  # 6: null difficulty too: after 2 by sample_id
    ])
    scores = quadrants.assign(scores, quadrants.Thresholds(1.0, 0.5, None, None))  # a manifest lists them
    expected = [1, 4, 3, 0, 5, 2, 6]
    for frame in (scores, scores.reverse()):  # the input order does not matter
        ranked = export.prune_order(frame, by="difficulty")
        assert ranked["sample_id"].to_list() == expected
        assert ranked["prune_rank"].to_list() == list(range(7))
    # floor(0.3 * 7) = 2: the two hardest; floor(0.5 * 7) = 3: and the next
    manifest = export.prune_manifest(scores, frac=0.3, by="difficulty")
    assert manifest["sample_id"].to_list() == list(range(7))
    assert manifest.filter(~pl.col("keep"))["sample_id"].to_list() == [1, 4]
    assert manifest["prune_rank"].to_list() == [3, 0, 5, 2, 1, 4, 6]
    assert export.prune_manifest(scores, frac=0.5, by="difficulty").filter(~pl.col("keep"))[
        "sample_id"].to_list() == [1, 3, 4]


def test_memorization_ranking_full_ties_go_by_sample_id() -> None:
    scores = quadrants.assign(scores_frame([(1.0, 0.5, 1)] * 4 + [(1.0, 0.6, 0)]),
                              quadrants.Thresholds(1.0, 0.5, None, None))
    assert export.prune_order(scores.reverse(), by="memorization")["sample_id"].to_list() == [4, 0, 1, 2, 3]
    pruned = export.prune_manifest(scores, frac=0.4, by="memorization").filter(~pl.col("keep"))
    assert pruned["sample_id"].to_list() == [0, 4]


def test_quadrant_ranking_within_a_quadrant_and_unplaced_last() -> None:
    # thresholds: difficulty > 1 is high, memorization > 0.5 is high
    scores = scores_frame([
        (2.0, 0.9, 1),    # 0 noisy-outlier
        (2.0, 0.6, 3),    # 1 noisy-outlier: lower memorization -> after 0 and 2 despite more events
        (2.0, 0.9, 2),    # 2 noisy-outlier: same rate as 0, more forget events -> before 0
        (0.5, 0.8, 1),    # 3 hotspot
        (0.2, 0.8, 1),    # 4 hotspot: same rate and events as 3, easier -> before 3
        (None, 0.99, 9),  # 5 unplaced (no difficulty): last, whatever its memorization
        (3.0, 0.1, 0),    # 6 ambiguous-hard
        (0.1, 0.0, 0),    # 7 stable-easy
        (0.1, 0.3, 1),    # 8 stable-easy: higher memorization -> before 7
        (2.0, None, 0),   # 9 unplaced (excluded): after 5 (null memorization last)
    ])
    scores = quadrants.assign(scores, quadrants.Thresholds(1.0, 0.5, None, None))
    expected = [2, 0, 1, 4, 3, 6, 8, 7, 5, 9]
    assert export.prune_order(scores, by="quadrant")["sample_id"].to_list() == expected
    assert export.prune_order(scores.reverse(), by="quadrant")["sample_id"].to_list() == expected
    pruned = export.prune_manifest(scores, frac=0.5, by="quadrant").filter(~pl.col("keep"))
    assert sorted(pruned["sample_id"].to_list()) == [0, 1, 2, 3, 4]
    assert set(pruned["quadrant"]) == {quadrants.NOISY_OUTLIER, quadrants.HOTSPOT}


def test_random_ranking_is_numpys_permutation_of_the_sorted_ids() -> None:
    scores = quadrants.assign(scores_frame([(1.0, 0.0, 0)] * 6), quadrants.Thresholds(1.0, 0.5, None, None))
    scores = scores.with_columns(sample_id=pl.col("sample_id") * 10 + 5)  # ids 5, 15, ..., 55
    positions = np.random.default_rng(7).permutation(6)  # PCG64, seed 7: indices into the sorted ids
    expected = [int(10 * i + 5) for i in positions]
    assert export.prune_order(scores.reverse(), by="random", seed=7)["sample_id"].to_list() == expected
    pruned = export.prune_manifest(scores, frac=0.5, by="random", seed=7).filter(~pl.col("keep"))
    assert pruned["sample_id"].to_list() == sorted(expected[:3])


def test_random_ranking_depends_on_the_seed_only() -> None:
    scores = scores_frame([(1.0, 0.0, 0)] * 50)
    a = export.prune_order(scores, by="random", seed=1)["sample_id"].to_list()
    b = export.prune_order(scores.reverse(), by="random", seed=1)["sample_id"].to_list()
    c = export.prune_order(scores, by="random", seed=2)["sample_id"].to_list()
    assert a == b and a != c and sorted(a) == list(range(50))


def test_weights_normalise_to_mean_one_and_refuse_all_zero() -> None:
    scores = quadrants.assign(
        scores_frame([(0.1, 0.0, 0), (0.1, 0.9, 2), (9.0, 0.0, 0), (9.0, 0.8, 2), (None, 0.0, 0)]),
        quadrants.Thresholds(1.0, 0.5, None, None),
    )
    w = export.sample_weights(scores)
    # multipliers 1, 0.5, 2, 0, 1 (unplaced): mean 0.9
    assert w["weight"].to_list() == pytest.approx([1 / 0.9, 0.5 / 0.9, 2 / 0.9, 0.0, 1 / 0.9])
    assert w["weight"].mean() == pytest.approx(1.0)
    zero = {q: 0.0 for q in (*quadrants.QUADRANTS, quadrants.UNPLACED)}
    with pytest.raises(OptionError, match="every sample would get weight 0"):
        export.sample_weights(scores, zero)
    with pytest.raises(OptionError, match="finite number >= 0"):
        export.sample_weights(scores, {quadrants.HOTSPOT: -1.0})
