"""The deduplication baselines (Lee et al. 2022) against their definitions.

ExactSubstr: every span of >= min_len tokens that occurs earlier (row-major order, never across a
row boundary) is removed; first occurrences stay. NearDup: rows whose 5-gram sets have Jaccard
>= threshold are clustered (connected components); the first row of each cluster stays. Each is
checked on hand-made corpora with known answers and against a brute-force reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carto_cli.errors import OptionError
from carto_cli.experiment import dedup
from carto_cli.experiment.dedup import exact_substr_mask, near_duplicate_rows, repack

# ---------------------------------------------------------------- references, straight from the definitions


def later_copies_reference(rows: np.ndarray, min_len: int) -> np.ndarray:
    """Every token of every span [s, e), e - s >= min_len, whose tokens occur at an earlier position
    (an earlier row, or the same row at a lower offset). All lengths, not only min_len."""
    n, w = rows.shape
    removed = np.zeros((n, w), bool)
    for r in range(n):
        for s in range(w):
            for e in range(s + min_len, w + 1):
                span = rows[r, s:e].tobytes()
                earlier = any(span in rows[q].tobytes() for q in range(r)) or span in rows[r, : e - 1].tobytes()
                if earlier:
                    removed[r, s:e] = True
    return removed


def jaccard(a: np.ndarray, b: np.ndarray, n: int = 5) -> float:
    grams_a = {a[k : k + n].tobytes() for k in range(len(a) - n + 1)}
    grams_b = {b[k : k + n].tobytes() for k in range(len(b) - n + 1)}
    return len(grams_a & grams_b) / len(grams_a | grams_b)


def near_duplicates_reference(rows: np.ndarray, threshold: float) -> np.ndarray:
    """All pairs' exact Jaccard, connected components, all but each component's lowest row removed."""
    label = list(range(len(rows)))
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if jaccard(rows[i], rows[j]) >= threshold:
                old, new = max(label[i], label[j]), min(label[i], label[j])
                label = [new if x == old else x for x in label]
    return np.array(label) != np.arange(len(rows))


def random_rows(seed: int, n: int, w: int, alphabet: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, alphabet, size=(n, w), dtype=np.uint8)


def edit(row: np.ndarray, positions: list[int], seed: int = 0) -> np.ndarray:
    """A copy of `row` with the tokens at `positions` changed (to other values)."""
    out = row.copy()
    out[positions] = (out[positions].astype(int) + 1 + np.random.default_rng(seed).integers(0, 254)) % 256
    return out


# ---------------------------------------------------------------- ExactSubstr

# Every background token distinct (int32: any integer dtype works), so the only repeats are planted:
# a 10-token span (negative values) at row 1 offset 5 (the first occurrence), row 3 offset 0, row 4 offset 20.
SPAN = -np.arange(1, 11, dtype=np.int32)
PLANTED = np.arange(6 * 32, dtype=np.int32).reshape(6, 32)
PLANTED[1, 5:15] = PLANTED[3, 0:10] = PLANTED[4, 20:30] = SPAN


@pytest.mark.parametrize("min_len", [1, 5, 10])
def test_planted_span_later_copies_removed_first_kept(min_len):
    expected = np.zeros(PLANTED.shape, bool)
    expected[3, 0:10] = expected[4, 20:30] = True
    assert np.array_equal(exact_substr_mask(PLANTED, min_len), expected)


@pytest.mark.parametrize("min_len", [11, 32, 33])
def test_span_shorter_than_min_len_is_not_removed(min_len):
    assert not exact_substr_mask(PLANTED, min_len).any()


def test_a_repeat_never_straddles_two_rows():
    rows = np.array([[0, 0, 7, 8, 9], [1, 2, 3, 0, 0], [7, 8, 9, 1, 2], [3, 5, 5, 5, 5]], dtype=np.uint8)
    # "7 8 9 1 2 3" is rows 0-1 read across the boundary, and rows 2-3: not a repeat at all.
    assert not exact_substr_mask(rows, 5).any()
    # "7 8 9" and "1 2" (within rows) do repeat: row 2 is a later copy of both, row 3's "5 5" of itself.
    assert exact_substr_mask(rows, 2).tolist() == [[False, False, False, False, False],
                                                  [False, False, False, True, True],
                                                  [True, True, True, True, True],
                                                  [False, False, True, True, True]]  # fmt: skip


def test_self_overlapping_repeats():
    abab = np.array([list(b"abababab"), list(b"aaaaaaxy")], dtype=np.uint8)
    # "ab" and "ba" first occur at offsets 0 and 1; every later window is a copy. In "aaaaaa" each
    # window from offset 1 on is a later copy of "aaa" at 0: a token of the first occurrence that also
    # lies inside a later copy is removed, so one "a" stays.
    assert exact_substr_mask(abab, 2).tolist() == [[False, False] + [True] * 6, [False] + [True] * 5 + [False] * 2]
    assert exact_substr_mask(abab, 3)[0].tolist() == [False, False] + [True] * 6  # "aba" again at 2, "bab" at 3


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_len", [1, 2, 3, 5, 8])
def test_matches_brute_force_on_random_corpora(seed, min_len):
    rows = random_rows(seed, 5, 16, alphabet=3)  # a small alphabet: many natural repeats
    rows[3, 2:11] = rows[1, 4:13]  # and a planted one
    assert np.array_equal(exact_substr_mask(rows, min_len), later_copies_reference(rows, min_len))


@settings(max_examples=60, deadline=None)
@given(rows=arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 12)), elements=st.integers(0, 2)),
       min_len=st.integers(1, 6))  # fmt: skip
def test_matches_brute_force_property(rows, min_len):
    assert np.array_equal(exact_substr_mask(rows, min_len), later_copies_reference(rows, min_len))


@pytest.mark.parametrize("seed", range(3))
def test_exact_when_every_window_hash_collides(monkeypatch, seed):
    rows = random_rows(seed, 5, 16, alphabet=3)
    rows[4, 0:9] = rows[0, 7:16]
    monkeypatch.setattr(dedup, "_window_hashes", lambda r, n: np.zeros((r.shape[0], r.shape[1] - n + 1), np.uint64))
    for min_len in (2, 4, 9):
        assert np.array_equal(exact_substr_mask(rows, min_len), later_copies_reference(rows, min_len))


def test_min_len_must_be_positive_and_rows_integer():
    with pytest.raises(OptionError, match="min_len"):
        exact_substr_mask(PLANTED, 0)
    with pytest.raises(OptionError, match="integer"):
        exact_substr_mask(PLANTED.astype(float), 5)


def test_repack_keeps_order_and_drops_only_removed_tokens():
    rows = np.arange(20, dtype=np.uint16).reshape(4, 5)
    removed = np.zeros(rows.shape, bool)
    removed[0, 1] = removed[2, :] = removed[3, 4] = True
    packed = repack(rows, removed, 4)
    # kept stream: 0 2 3 4 | 5..9 | 15 16 17 18 (13 tokens) -> three rows of 4, the last token dropped
    assert packed.dtype == np.uint16
    assert packed.tolist() == [[0, 2, 3, 4], [5, 6, 7, 8], [9, 15, 16, 17]]
    assert np.array_equal(repack(rows, np.zeros(rows.shape, bool), 5), rows)


def test_repack_after_exact_substr():
    packed = repack(PLANTED, exact_substr_mask(PLANTED, 10), 32)
    assert packed.shape == (5, 32)  # 192 - 20 tokens: 5 full rows, 12 tokens left over
    kept = np.concatenate([PLANTED[:3].ravel(), PLANTED[3, 10:], PLANTED[4, :20], PLANTED[4, 30:], PLANTED[5]])
    assert np.array_equal(packed.ravel(), kept[:160])
    with pytest.raises(OptionError, match="shape"):
        repack(PLANTED, np.zeros((6, 31), bool), 32)


# ---------------------------------------------------------------- NearDup

W = 128
BASE = random_rows(100, 1, W)[0]


def test_near_duplicates_clustered_first_kept():
    a = edit(BASE, [40])  # J(a, BASE) = 119/129 = 0.92
    b = edit(BASE, [10, 90])  # J = 0.85 to BASE, 0.78 to a: joined through BASE
    rows = np.concatenate([random_rows(1, 3, W), [a], random_rows(2, 3, W), [BASE], random_rows(3, 2, W), [b]])
    assert np.flatnonzero(near_duplicate_rows(rows)).tolist() == [7, 10]  # a (row 3) stays


def test_unrelated_and_low_overlap_rows_are_kept():
    half = np.concatenate([BASE[:87], random_rows(4, 1, W - 87)[0]])  # shares 83 of 124 5-grams
    assert abs(jaccard(BASE, half) - 0.5) < 0.01
    rows = np.concatenate([[BASE, half], random_rows(5, 50, W)])
    assert not near_duplicate_rows(rows).any()
    # one permutation a band makes (BASE, half) a candidate (they share minima); the exact check rejects it
    assert not near_duplicate_rows(rows, bands=128).any()


def test_clusters_are_connected_components():
    a, b = BASE, edit(BASE, [20])
    c = edit(b, [100])
    assert jaccard(a, b) > 0.9 and jaccard(b, c) > 0.9 and jaccard(a, c) < 0.9
    assert near_duplicate_rows(np.stack([a, b, c]), threshold=0.9).tolist() == [False, True, True]


def test_identical_rows_and_rows_shorter_than_ngram():
    rows = np.concatenate([random_rows(6, 4, W), [BASE] * 3])
    assert near_duplicate_rows(rows).tolist() == [False] * 5 + [True] * 2
    short = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 4]], dtype=np.int64)  # one 3-gram each
    assert near_duplicate_rows(short).tolist() == [False, True, False]


@pytest.mark.parametrize("seed", range(3))
def test_near_duplicates_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    rows = []
    for base in random_rows(seed, 12, 64):  # families of 1 to 4 rows: a base and copies with 1 to 3 edits
        rows.append(base)
        for k in range(rng.integers(0, 4)):
            rows.append(edit(base, list(rng.integers(0, 64, rng.integers(1, 4))), seed=k))
    rows = np.stack(rows)[rng.permutation(len(rows))]
    expected = near_duplicates_reference(rows, 0.8)
    assert expected.any() and not expected.all()
    # one permutation a band: LSH misses no pair with a shared minimum, so the result is exact
    assert np.array_equal(near_duplicate_rows(rows, bands=128), expected)
    assert np.array_equal(near_duplicate_rows(rows), expected)  # the default 16 bands of 8


def test_near_duplicate_options_are_checked():
    with pytest.raises(OptionError, match="threshold"):
        near_duplicate_rows(np.stack([BASE, BASE]), threshold=0)
    with pytest.raises(OptionError, match="bands"):
        near_duplicate_rows(np.stack([BASE, BASE]), bands=129)
