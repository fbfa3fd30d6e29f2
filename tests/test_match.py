"""The multi-pattern token search (`carto_cli.score.match`): hand-made rows with known answers, a
property test against a brute-force search, and the compiled loop (`_match.c`) against the numpy
version bit for bit.

Every hand-made case runs on both builds (the `build` fixture): the compiled loop where it was
built, and the numpy version (`CARTO_NO_COMPILED=1`).
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carto_cli.score import compiled, match

_BUILT = compiled._built("_match") is not None
MASK = 2**64 - 1


def test_pip_built_the_extension_where_a_compiler_is() -> None:
    """As tests/test_compiled.py: where a C compiler and Python's headers are, a missing
    `_match` extension is a failure, not a skip of the compiled cases below."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here: carto runs the numpy version")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no Python headers here (python3-dev): carto runs the numpy version")
    assert _BUILT, "pip did not build carto_cli/score/_match.c (see setup.py)"


@pytest.fixture(params=["compiled", "numpy"])
def build(request, monkeypatch) -> str:
    if request.param == "compiled":
        if not _BUILT:
            pytest.skip("the _match extension was not built")
        monkeypatch.delenv("CARTO_NO_COMPILED", raising=False)
        assert compiled.match_loops() is not None
    else:
        monkeypatch.setenv("CARTO_NO_COMPILED", "1")
        assert compiled.match_loops() is None
    return request.param


def rows_of(rows: list[list[int]], dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([t for row in rows for t in row], dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
    return values, offsets


def search(patterns: list[list[int]], rows: list[list[int]], *, anchor: int, dtype=np.int64) -> list[tuple]:
    hits = match.find(match.Patterns([np.array(p, dtype=np.int64) for p in patterns], anchor=anchor),
                      *rows_of(rows, dtype))
    for array in (hits.pattern, hits.row, hits.pos):
        assert array.dtype == np.int64
    return list(zip(hits.pattern.tolist(), hits.row.tolist(), hits.pos.tolist()))


def brute(patterns: list[list[int]], rows: list[list[int]]) -> list[tuple]:
    """Every (pattern, row, pos) by comparing each pattern at every position of every row."""
    return sorted((j, r, i) for j, p in enumerate(patterns) for r, row in enumerate(rows)
                  for i in range(len(row) - len(p) + 1) if row[i : i + len(p)] == list(p))


# ------------------------------------------------------------------ hand-made cases


def test_overlapping_occurrences_are_all_found(build) -> None:
    assert search([[7, 7, 7]], [[7, 7, 7, 7, 7]], anchor=2) == [(0, 0, 0), (0, 0, 1), (0, 0, 2)]


def test_a_pattern_at_a_rows_end_is_found_and_one_running_past_it_is_not(build) -> None:
    rows = [[1, 2, 3, 4, 5], [9]]
    assert search([[3, 4, 5], [4, 5, 9]], rows, anchor=2) == [(0, 0, 2)]


def test_no_occurrence_crosses_from_one_row_into_the_next(build) -> None:
    # [2, 3, 4] and [3, 4] exist only across the boundaries (an empty row in between, too)
    rows = [[1, 2, 3], [4, 5], [], [3], [4, 8]]
    assert search([[2, 3, 4], [3, 4], [4, 5]], rows, anchor=2) == [(2, 1, 0)]


def test_rows_shorter_than_the_anchor_and_patterns_longer_than_the_row(build) -> None:
    rows = [[], [5], [5, 6], [5, 6, 7], [5, 6, 7, 8]]
    assert search([[5, 6, 7, 8]], rows, anchor=3) == [(0, 4, 0)]
    assert search([[5, 6, 7]], rows, anchor=3) == [(0, 3, 0), (0, 4, 0)]


def test_patterns_that_share_an_anchor_are_each_compared(build) -> None:
    patterns = [[1, 2, 3], [1, 2, 4], [1, 2, 3, 9], [1, 2, 3]]  # the last: a duplicate, reported too
    rows = [[1, 2, 3, 9, 1, 2, 4], [0, 1, 2], [1, 2, 3]]
    assert search(patterns, rows, anchor=2) == brute(patterns, rows) == [
        (0, 0, 0), (0, 2, 0), (1, 0, 4), (2, 0, 0), (3, 0, 0), (3, 2, 0)]


def test_the_anchor_may_be_the_whole_pattern_or_one_token(build) -> None:
    rows = [[4, 1, 4, 4], [4]]
    assert search([[4, 4]], rows, anchor=2) == [(0, 0, 2)]
    assert search([[4], [4, 1]], rows, anchor=1) == [(0, 0, 0), (0, 0, 2), (0, 0, 3), (0, 1, 0), (1, 0, 0)]


def test_token_ids_up_to_2_62_and_negative_ids(build) -> None:
    big, small = 2**62, -(2**62)
    rows = [[big, -1, small, big, -1, small], [-1, small, 0], [2**63 - 1, -(2**63)]]
    patterns = [[big, -1, small], [-1, small], [2**63 - 1, -(2**63)], [small, big + 1]]
    assert search(patterns, rows, anchor=2) == brute(patterns, rows) == [
        (0, 0, 0), (0, 0, 3), (1, 0, 1), (1, 0, 4), (1, 1, 0), (2, 2, 0)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint32, np.int8, np.uint8, np.int16, np.uint64])
def test_narrow_token_columns_give_the_int64_result(build, dtype) -> None:
    rng = np.random.default_rng(3)
    rows = [rng.integers(0, 4, int(n)).tolist() for n in rng.integers(0, 40, 30)]
    patterns = [rng.integers(0, 4, int(n)).tolist() for n in rng.integers(3, 6, 8)]
    want = brute(patterns, rows)
    assert want and search(patterns, rows, anchor=3, dtype=dtype) == want


def test_negative_ids_in_a_narrow_column_are_their_int64_values(build) -> None:
    assert search([[-3, -1, 5]], [[0, -3, -1, 5]], anchor=2, dtype=np.int8) == [(0, 0, 1)]


def test_nothing_to_search(build) -> None:
    assert search([[1, 2]], [], anchor=2) == []
    assert search([[1, 2]], [[], []], anchor=2) == []
    hits = match.find(match.Patterns([], anchor=2), *rows_of([[1, 2]]))
    assert len(hits) == 0 and hits.pattern.dtype == np.int64
    one_offset = match.find(match.Patterns([np.array([1, 2])], anchor=2), np.array([1, 2]), np.array([0]))
    assert len(one_offset) == 0


def test_only_the_span_of_the_offsets_is_searched(build) -> None:
    """Rows that are a slice of a longer array: tokens before offsets[0] or after offsets[-1]
    belong to no row (the numpy version used to report a hit in row -1, or fail, there)."""
    values = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3])
    patterns = match.Patterns([np.array([1, 2, 3])], anchor=2)
    hits = match.find(patterns, values, np.array([3, 6]))
    assert (hits.pattern.tolist(), hits.row.tolist(), hits.pos.tolist()) == ([0], [0], [0])
    hits = match.find(patterns, values, np.array([0, 3]))
    assert (hits.row.tolist(), hits.pos.tolist()) == ([0], [0])


@pytest.mark.parametrize("offsets, problem", [
    ([0, 3, 2], "non-decreasing"),
    ([0, 4, 7], "past the end"),
    ([-1, 2], ">= 0"),
])
def test_offsets_outside_the_values_are_refused(build, offsets, problem) -> None:
    patterns = match.Patterns([np.array([1, 2])], anchor=2)
    with pytest.raises(ValueError, match=problem):
        match.find(patterns, np.arange(6), np.array(offsets))


# ------------------------------------------------------------------ hash collisions


def _unshift(y: int, s: int) -> int:
    """The x with x ^ (x >> s) == y (64-bit)."""
    x = y
    for _ in range(64 // s + 1):
        x = y ^ (x >> s)
    return x


def unmix(z: int) -> int:
    """The token whose mix (match._mix, splitmix64's finaliser, a bijection) is z, as int64."""
    z = _unshift(z, 31)
    z = z * pow(0x94D049BB133111EB, -1, 2**64) & MASK
    z = _unshift(z, 27)
    z = z * pow(0xBF58476D1CE4E5B9, -1, 2**64) & MASK
    z = _unshift(z, 30)
    z = (z - 0x9E3779B97F4A7C15) & MASK
    return z - 2**64 if z >= 2**63 else z


def test_unmix_inverts_the_mix() -> None:
    tokens = np.array([0, 1, -1, 2**62, -(2**63), 12345], dtype=np.int64)
    mixed = match._mix(tokens)
    assert [unmix(int(m)) for m in mixed] == tokens.tolist()


def test_a_window_whose_hash_collides_with_an_anchor_is_not_a_hit(build) -> None:
    """Two different windows with the same hash, built through the mix's inverse:
    mix(a0) * MUL + mix(a1) == mix(b0) * MUL + mix(b1) when mix(b0) = mix(a0) + 1 and
    mix(b1) = mix(a1) - MUL (modulo 2^64)."""
    mul = int(match._MUL)
    x0, x1 = 0x1234_5678_9ABC_DEF0, 0x0FED_CBA9_8765_4321
    a = [unmix(x0), unmix(x1)]
    b = [unmix((x0 + 1) & MASK), unmix((x1 - mul) & MASK)]
    assert a != b
    assert match.window_hashes(np.array(a), 2)[0] == match.window_hashes(np.array(b), 2)[0]  # a true collision
    rows = [[*b, 5], [*a, 5], [7, *b, *a]]
    assert search([[*a, 5], a], rows, anchor=2) == [(0, 1, 0), (1, 1, 0), (1, 2, 3)]
    assert search([[*b, 5]], rows, anchor=2) == [(0, 0, 0)]


# ------------------------------------------------------------------ window hashes


@pytest.mark.parametrize("anchor", [1, 2, 3, 5, 8, 13, 16, 31, 64])
def test_window_hashes_are_the_polynomial_of_the_mixed_tokens(anchor: int) -> None:
    values = np.random.default_rng(anchor).integers(-(2**63), 2**63 - 1, 200, dtype=np.int64)
    mixed = [int(m) for m in match._mix(values)]
    want = []
    for i in range(len(values) - anchor + 1):
        h = 0
        for k in range(anchor):
            h = (h * int(match._MUL) + mixed[i + k]) & MASK
        want.append(h)
    assert match.window_hashes(values, anchor).tolist() == want
    assert len(match.window_hashes(values[: anchor - 1], anchor)) == 0


# ------------------------------------------------------------------ properties and builds


@st.composite
def workloads(draw):
    anchor = draw(st.integers(1, 4))
    token = st.integers(0, 3) if draw(st.booleans()) else st.sampled_from([-(2**63), -1, 0, 2**62, 2**63 - 1])
    rows = draw(st.lists(st.lists(token, max_size=25), max_size=8))
    patterns = draw(st.lists(st.lists(token, min_size=anchor, max_size=anchor + 4), min_size=1, max_size=6))
    for row in rows[:3]:  # strings that occur, so that most examples have hits
        if len(row) >= anchor:
            start = draw(st.integers(0, len(row) - anchor))
            patterns.append(row[start : start + draw(st.integers(anchor, len(row) - start))])
    return anchor, rows, patterns


@pytest.mark.parametrize("off", [False, True], ids=["compiled", "numpy"])
@settings(max_examples=150, deadline=None)
@given(workload=workloads())
def test_any_search_equals_the_brute_force(off: bool, workload) -> None:
    anchor, rows, patterns = workload
    if not off and not _BUILT:
        pytest.skip("the _match extension was not built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARTO_NO_COMPILED", "1") if off else mp.delenv("CARTO_NO_COMPILED", raising=False)
        assert search(patterns, rows, anchor=anchor) == brute(patterns, rows)


@pytest.mark.skipif(not _BUILT, reason="the _match extension was not built")
@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_loop_gives_the_numpy_versions_arrays(monkeypatch, seed: int) -> None:
    """Many rows, many patterns, some common (thousands of copies, so the C hit buffer grows several
    times), some sharing anchors: the three arrays are equal element for element."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 300, 2000)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, 3 if seed % 2 else 50, int(offsets[-1])).astype(np.int64)
    values[rng.random(len(values)) < 0.5] = 0  # runs of zeros: common strings
    anchor = int(rng.integers(1, 9))
    patterns = [values[s : s + int(n)] for s, n in zip(rng.integers(0, len(values) - 40, 60),
                                                        rng.integers(anchor, anchor + 30, 60))]
    patterns += [np.concatenate([p[:anchor], rng.integers(0, 50, 5)]) for p in patterns[:20]]  # shared anchors
    patterns += [np.zeros(anchor + k, dtype=np.int64) for k in range(4)]
    compiled_patterns = match.Patterns(patterns, anchor=anchor)
    monkeypatch.delenv("CARTO_NO_COMPILED", raising=False)
    got = match.find(compiled_patterns, values, offsets)
    monkeypatch.setenv("CARTO_NO_COMPILED", "1")
    want = match.find(compiled_patterns, values, offsets)
    assert len(want) > 2000
    for a, b in ((got.pattern, want.pattern), (got.row, want.row), (got.pos, want.pos)):
        assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)


@pytest.mark.skipif(not _BUILT, reason="the _match extension was not built")
def test_a_pattern_with_a_million_copies(monkeypatch) -> None:
    """The hit buffer doubles from 1,024 to hold them all, in (pattern, row, pos) order."""
    monkeypatch.delenv("CARTO_NO_COMPILED", raising=False)
    values = np.full(1_000_000 + 7, 4, dtype=np.uint16)
    offsets = np.array([0, 500_000, len(values)], dtype=np.int64)
    hits = match.find(match.Patterns([np.array([9] * 8), np.array([4] * 8)], anchor=8), values, offsets)
    first, second = 500_000 - 7, len(values) - 500_000 - 7
    assert len(hits) == first + second
    assert (hits.pattern == 1).all()
    assert np.array_equal(hits.row, np.repeat([0, 1], [first, second]))
    assert np.array_equal(hits.pos, np.concatenate([np.arange(first), np.arange(second)]))


@pytest.mark.skipif(not _BUILT, reason="the _match extension was not built")
@pytest.mark.parametrize("change, problem", [
    ({"lengths": np.array([1, 3])}, "at least anchor"),
    ({"starts": np.array([0, 4])}, "outside flat"),
    ({"starts": np.array([-1, 0])}, "outside flat"),
    ({"order": np.array([0, 0])}, "permutation"),
    ({"order": np.array([0, 2])}, "permutation"),
    ({"sorted_hashes": np.array([5, 1], dtype=np.uint64)}, "sorted"),
    ({"lengths": np.array([2])}, "one entry per pattern"),
    ({"offsets": np.array([0])}, "at least 2"),
    ({"offsets": np.array([0, 2], dtype=np.int32)}, "64-bit"),
    ({"values": np.array([1.0, 2.0])}, "integers"),
    ({"anchor": 0}, "anchor"),
])
def test_the_compiled_loop_refuses_what_would_make_it_read_outside_its_arrays(change, problem) -> None:
    """The C loop checks every input itself (it is called with arrays, not Patterns)."""
    arguments = {"values": np.array([1, 2, 3, 4]), "offsets": np.array([0, 4]), "flat": np.array([1, 2, 3, 2, 3]),
                 "starts": np.array([0, 3]), "lengths": np.array([3, 2]),
                 "sorted_hashes": np.array([1, 2], dtype=np.uint64), "order": np.array([0, 1]), "anchor": 2}
    arguments.update(change)
    with pytest.raises(ValueError, match=problem):
        compiled.match_loops().find(*arguments.values())
