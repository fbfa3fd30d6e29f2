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


def window_hashes(values: np.ndarray, anchor: int) -> np.ndarray:
    """(len(values) - anchor + 1,) the hash of every window of `anchor` consecutive tokens."""
    n = len(values) - anchor + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    mixed = _mix(values)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(anchor):  # h = sum_k mix(t[i + k]) * MUL^(anchor - 1 - k), modulo 2^64
            h = h * _MUL + mixed[k : k + n]
    return h


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


def find(patterns: Patterns, values: np.ndarray, offsets: np.ndarray) -> Hits:
    """Every occurrence of every pattern in the rows `values[offsets[i]:offsets[i + 1]]`."""
    from carto_cli.score import compiled

    values = np.ascontiguousarray(values, dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if not len(patterns) or len(offsets) < 2:
        return Hits.empty()
    loops = compiled.match_loops()
    if loops is not None:
        pattern, row, pos = loops.find(values, offsets, patterns.flat, patterns.starts, patterns.lengths,
                                       patterns.sorted_hashes, patterns.order, patterns.anchor)
        return Hits(pattern, row, pos)
    return _find_numpy(patterns, values, offsets)


def _find_numpy(patterns: Patterns, values: np.ndarray, offsets: np.ndarray) -> Hits:
    anchor = patterns.anchor
    h = window_hashes(values, anchor)  # (n - anchor + 1,)
    if not len(h):
        return Hits.empty()
    # the row of each window start, and whether the window stays inside that row
    row_of = np.searchsorted(offsets, np.arange(len(h)), side="right") - 1
    inside = np.arange(len(h)) + anchor <= offsets[row_of + 1]
    lo = np.searchsorted(patterns.sorted_hashes, h, side="left")
    hi = np.searchsorted(patterns.sorted_hashes, h, side="right")
    where = np.flatnonzero((hi > lo) & inside)
    out_pattern, out_row, out_pos = [], [], []
    for i in where:  # an anchor's hash seen: compare the patterns that have it, token by token
        r = row_of[i]
        end = offsets[r + 1]
        for j in patterns.order[lo[i]:hi[i]]:
            n = patterns.lengths[j]
            if i + n <= end and np.array_equal(values[i : i + n], patterns.patterns[j]):
                out_pattern.append(j)
                out_row.append(r)
                out_pos.append(i - offsets[r])
    if not out_pattern:
        return Hits.empty()
    order = np.lexsort((out_pos, out_row, out_pattern))
    as_array = [np.asarray(a, dtype=np.int64)[order] for a in (out_pattern, out_row, out_pos)]
    return Hits(*as_array)
