"""Exact search of many token strings in many token rows: where every copy of a memorized string is.

    patterns = Patterns([np.array([5, 9, 9, 2]), np.array([7, 7, 7, 7, 1])], anchor=4)
    hits = find(patterns, values, offsets)     # rows as one flat array and offsets (n + 1,)
    hits.pattern, hits.row, hits.pos           # every occurrence: which string, which row, where

A pattern is a sequence of at least `anchor` tokens; it occurs in a row wherever the row holds
exactly its tokens (overlapping occurrences included). Every pattern's first `anchor` tokens (its
*anchor*) are hashed into a table; every window of `anchor` tokens of every row is hashed the
same way (a polynomial hash modulo 2^64 of the tokens after a 64-bit mix), and each window whose
hash is in the table is compared token by token with the patterns that have that anchor. Hash
collisions cost a comparison, never a wrong match: the result is exact.

This is the multi-pattern search of Rabin & Karp (1987) with one fixed window, the pattern set
small (findings) and the text large (a training set): the rows are read once, a batch at a time,
and the memory held is the patterns' table plus one batch. It runs in C where pip built the
extension (`_match.c`, see `compiled.match_loops`), in numpy otherwise, with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MUL = np.uint64(0x9E3779B97F4A7C15)  # the base of the polynomial hash (odd: 2^64 has no odd divisor)


@dataclass(frozen=True)
class Hits:
    """Occurrences, one per element: `pattern` (index into the Patterns), `row` (index into the
    rows searched), `pos` (the token index in that row where the pattern starts)."""

    pattern: np.ndarray  # (h,) int64
    row: np.ndarray  # (h,) int64
    pos: np.ndarray  # (h,) int64

    @staticmethod
    def empty() -> Hits:
        none = np.zeros(0, dtype=np.int64)
        return Hits(none, none, none)

    def __len__(self) -> int:
        return len(self.pattern)


def _mix(tokens: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each token (splitmix64's finaliser), so that small token ids spread over
    the hash's range."""
    z = tokens.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _power(k: int) -> np.uint64:
    """MUL^k modulo 2^64."""
    return np.uint64(pow(int(_MUL), k, 2**64))


def window_hashes(values: np.ndarray, anchor: int) -> np.ndarray:
    """(len(values) - anchor + 1,) the hash of every window of `anchor` consecutive tokens:
    sum_k mix(t[i + k]) * MUL^(anchor - 1 - k), modulo 2^64.

    Built from the hashes of shorter windows, O(log anchor) passes over the values instead of
    `anchor`: a window of a + b tokens is its first a tokens' window times MUL^b plus the window of
    the b tokens after them (H_{a+b}[i] = H_a[i] * MUL^b + H_b[i + a]; the same sum, term by term,
    modulo 2^64). The windows of 2^s tokens are doubled this way, and those of the bits of
    `anchor` joined."""
    n = len(values) - anchor + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        block, width = _mix(values), 1  # the hashes of every window of `width` tokens
        result, covered = None, 0  # of every window of `covered` tokens (the low bits of anchor so far)
        bits = anchor
        while True:
            if bits & 1:
                if result is None:
                    result, covered = block, width
                else:
                    keep = len(values) - covered - width + 1
                    result = result[:keep] * _power(width) + block[covered : covered + keep]
                    covered += width
            bits >>= 1
            if not bits:
                break
            keep = len(block) - width
            block = block[:keep] * _power(width) + block[width : width + keep]
            width *= 2
    return result


class Patterns:
    """The token strings searched for, with their anchors' hashes sorted for lookup."""

    def __init__(self, patterns: list[np.ndarray], *, anchor: int) -> None:
        if anchor < 1:
            raise ValueError(f"anchor must be >= 1; got {anchor}")
        short = [len(p) for p in patterns if len(p) < anchor]
        if short:
            raise ValueError(f"every pattern needs at least anchor = {anchor} tokens; got one of {short[0]}")
        self.anchor = anchor
        self.patterns = [np.asarray(p, dtype=np.int64) for p in patterns]
        self.lengths = np.array([len(p) for p in self.patterns], dtype=np.int64)
        self.flat = np.concatenate(self.patterns) if self.patterns else np.zeros(0, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64) if self.patterns \
            else np.zeros(0, dtype=np.int64)
        hashes = np.array([window_hashes(p[:anchor], anchor)[0] for p in self.patterns], dtype=np.uint64)
        self.order = np.argsort(hashes, kind="stable")  # patterns by anchor hash
        self.sorted_hashes = hashes[self.order]

    def __len__(self) -> int:
        return len(self.patterns)


# The token dtypes the compiled loop reads as they are (a token is its value as int64); others are
# converted to int64 first.
_NATIVE = {np.dtype(t) for t in (np.int64, np.uint64, np.int32, np.uint32, np.int16, np.uint16, np.int8, np.uint8)}


def find(patterns: Patterns, values: np.ndarray, offsets: np.ndarray) -> Hits:
    """Every occurrence of every pattern in the rows `values[offsets[i]:offsets[i + 1]]`, sorted
    by (pattern, row, pos). `values` may be any integer dtype (a token is its value as int64);
    `offsets` must be non-decreasing and within `values` (ValueError otherwise). Rows shorter than
    the anchor hold no occurrence, and none crosses from one row into the next."""
    from carto_cli.score import compiled

    values = np.asarray(values)
    if values.dtype not in _NATIVE:
        values = values.astype(np.int64)
    values = np.ascontiguousarray(values)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if len(offsets) < 2:
        return Hits.empty()
    loops = compiled.match_loops()
    if loops is not None and len(patterns):  # the C loop checks the offsets itself
        pattern, row, pos = loops.find(values, offsets, patterns.flat, patterns.starts, patterns.lengths,
                                       patterns.sorted_hashes, patterns.order, patterns.anchor)
        return Hits(pattern, row, pos)
    _check_offsets(offsets, len(values))
    if not len(patterns):
        return Hits.empty()
    return _find_numpy(patterns, values.astype(np.int64, copy=False), offsets)


def _check_offsets(offsets: np.ndarray, n_values: int) -> None:
    """ValueError unless offsets are non-decreasing, from >= 0 up to at most n_values (as `_match.c`)."""
    if offsets[0] < 0:
        raise ValueError("match.find: offsets must be >= 0")
    if np.any(offsets[1:] < offsets[:-1]):
        raise ValueError("match.find: offsets must be non-decreasing")
    if offsets[-1] > n_values:
        raise ValueError("match.find: offsets point past the end of values")


def _find_numpy(patterns: Patterns, values: np.ndarray, offsets: np.ndarray) -> Hits:
    """`find` in numpy: the windows' hashes, those found among the anchors' (a binary search),
    then every (window, pattern with that anchor hash) pair compared token by token, all pairs at
    once, one token offset at a time (a Python loop over the longest pattern's length, not over
    hits)."""
    anchor = patterns.anchor
    lo_row, hi_row = int(offsets[0]), int(offsets[-1])
    h = window_hashes(values[:hi_row], anchor)  # (hi_row - anchor + 1,), windows inside the rows' span
    table = patterns.sorted_hashes
    first = np.searchsorted(table, h, side="left")
    seen = table[np.minimum(first, len(table) - 1)] == h
    seen[:lo_row] = False
    window = np.flatnonzero(seen)  # windows whose hash is an anchor's
    # every (window, pattern) pair to compare: the patterns order[first:last] of each window
    first = first[window]
    count = np.searchsorted(table, h[window], side="right") - first
    pair_window = np.repeat(window, count)
    rank = np.arange(len(pair_window)) - np.repeat(np.cumsum(count) - count, count) + np.repeat(first, count)
    pair_pattern = patterns.order[rank]
    # the row of each window (the last row starting at or before it: empty rows are skipped), and
    # only pairs whose pattern ends inside that row
    pair_row = np.searchsorted(offsets, pair_window, side="right") - 1
    length = patterns.lengths[pair_pattern]
    fits = pair_window + length <= offsets[pair_row + 1]
    pair_window, pair_pattern, pair_row, length = pair_window[fits], pair_pattern[fits], pair_row[fits], length[fits]
    # compare token t of every pair still equal so far, for t = 0, 1, ...
    start = patterns.starts[pair_pattern]
    equal = np.ones(len(pair_window), dtype=bool)
    alive = np.arange(len(pair_window))
    for t in range(int(length.max()) if len(length) else 0):
        alive = alive[length[alive] > t]
        if not len(alive):
            break
        same = values[pair_window[alive] + t] == patterns.flat[start[alive] + t]
        equal[alive[~same]] = False
        alive = alive[same]
    # pairs are in window order (row, then position): a stable sort by pattern gives (pattern, row, pos)
    by_pattern = np.argsort(pair_pattern[equal], kind="stable")
    row = pair_row[equal][by_pattern]
    return Hits(pair_pattern[equal][by_pattern].astype(np.int64), row.astype(np.int64),
                (pair_window[equal][by_pattern] - offsets[row]).astype(np.int64))
