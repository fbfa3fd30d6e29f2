"""Deduplication baselines: the two methods of Lee et al. 2022, "Deduplicating Training Data Makes
Language Models Better" (ACL), section 4, over fixed-width token rows (N, W) of any integer dtype.

    from carto_cli.experiment.dedup import exact_substr_mask, near_duplicate_rows, repack

    removed = exact_substr_mask(rows, min_len=50)   # (N, W) bool: tokens inside a later copy
    packed = repack(rows, removed, width=64)        # the kept tokens, packed into full rows again
    dropped = near_duplicate_rows(rows)             # (N,) bool: all but the first of each cluster

**ExactSubstr** (section 4.1). Every span of at least `min_len` tokens that occurs more than once is
removed except its first occurrence (row-major order: lowest row, then lowest offset). Each row is a
separate document: a window never crosses a row boundary (windows are taken inside each row, which
is what the paper's per-document separators achieve in its suffix array). Computed over windows of
exactly L = `min_len` tokens: a window at p is a *later copy* if the same L tokens occur at an
earlier position; every token of every later copy is removed. This is the same as the definition
for all lengths >= L: a later copy of a longer span, [s, s + m) equal to [q, q + m) with q earlier,
is the union of its L-windows, each equal to the window at the same offset in the earlier copy
(which is earlier too); and each later L-window is itself a repeated span of length >= L. A token in
a first occurrence that is also inside some later copy (self-overlap, as in "abababab") is removed.
The released tool (google-research/deduplicate-text-datasets, README) removes *every* occurrence,
the first too, and is run twice; this module keeps the first, as the paper's text describes.
How: a polynomial hash of every L-window (uint64 arithmetic, wrapping), the first window of each
hash value (`np.unique`), and a token-by-token comparison of each window with that first window, so
a hash collision never removes anything: windows that differ from their hash group's first are
grouped again among themselves, until every window is resolved. Covered tokens are marked with a
difference array and a cumulative sum.

**NearDup** (section 4.2). Rows are sets of token n-grams (5-grams; a row shorter than n is one
n-gram); two rows are near-duplicates if the Jaccard similarity of their n-gram sets is >= 0.8;
clusters are the connected components of that graph (union-find); the first row of each cluster is
kept and the rest removed. Rows with identical tokens are one cluster before anything is hashed.
Candidate pairs come from MinHash with LSH: each n-gram is a 64-bit hash (polynomial, then the
splitmix64 finalizer) and x its top 32 bits; each of `num_perm` hash functions is Dietzfelbinger's
multiply-add-shift h(x) = (a x + b) mod 2^64 with a, b uniform 64-bit, whose top 32 bits are a
strongly universal hash of x (a row's minimum compares the whole value, those bits first). Not the
Carter-Wegman (a x + b) mod (2^61 - 1): without a 128-bit product numpy needs ~15 operations a value
to compute it exactly (6x the time, measured, for the same estimates), and with `a` small enough for
a 64-bit product it wraps too few times, which biases the estimate (J = 0.92 read as 0.70, measured).
The signature splits into `bands` bands of r = num_perm // bands values; rows with an identical band
are candidates. By default r is the largest whose S-curve 1 - (1 - J^r)^b still finds a pair at
J = threshold with probability >= 0.9: for 128 permutations and 0.8 that is b = 16 bands of r = 8
(found with probability 0.95 at J = 0.8, 0.9999 at 0.9, 0.06 at J = 0.5). Every candidate pair is
then **verified** by the exact Jaccard of its two n-gram (hash) sets, so the MinHash estimate only
proposes pairs: verification removes false positives and cannot add pairs that LSH missed. (The
paper also checks its MinHash matches, by edit similarity; not checked against the full text.) All
pairs sharing a band bucket are verified, so a bucket of k distinct near-identical rows costs
k (k - 1) / 2 checks.
"""

from __future__ import annotations

import numpy as np

from carto_cli.errors import OptionError

_BASE = np.uint64(0x100000001B3)  # the polynomial hash's base (odd; the FNV-1 64-bit prime)
_PAD = np.uint64((1 << 64) - 1)  # fills the n-gram set rows; n-gram hashes keep 63 bits, so never equal it
_RECALL = 0.9  # the default LSH bands find a pair at J = threshold with at least this probability
_CHUNK = 1 << 22  # elements per temporary array in the chunked steps


def _check_rows(rows: np.ndarray) -> None:
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
        raise OptionError(f"rows must be a 2-D integer array (N, W), got {rows.ndim}-D {rows.dtype}.")


def _window_hashes(rows: np.ndarray, length: int) -> np.ndarray:
    """(N, W - length + 1) uint64: the polynomial hash of every window of `length` tokens in each row."""
    n_win = rows.shape[1] - length + 1
    tokens = rows.astype(np.uint64)  # negative values wrap: still one value per token
    hashes = np.zeros((rows.shape[0], n_win), np.uint64)
    for k in range(length):
        hashes *= _BASE
        hashes += tokens[:, k : k + n_win]
    return hashes


def _windows_equal(flat: np.ndarray, starts_a: np.ndarray, starts_b: np.ndarray, length: int) -> np.ndarray:
    """Whether the `length` tokens of `flat` at each of `starts_a` equal those at `starts_b`."""
    equal = np.empty(starts_a.size, bool)
    offsets = np.arange(length)
    step = max(1, _CHUNK // length)
    for s in range(0, starts_a.size, step):
        a, b = starts_a[s : s + step, None] + offsets, starts_b[s : s + step, None] + offsets  # (C, L)
        equal[s : s + step] = (flat[a] == flat[b]).all(axis=1)
    return equal


def exact_substr_mask(rows: np.ndarray, min_len: int) -> np.ndarray:
    """(N, W) bool, True = removed: every token inside a later copy of a span of >= `min_len` tokens
    (ExactSubstr; see the module docstring). Nothing is removed when `min_len` > W."""
    _check_rows(rows)
    if min_len < 1:
        raise OptionError(f"min_len must be at least 1, got {min_len}.")
    n, w = rows.shape
    if min_len > w or n == 0:
        return np.zeros((n, w), bool)
    n_win = w - min_len + 1
    hashes = _window_hashes(rows, min_len).ravel()  # (N * n_win,) row-major: window order = position order
    flat = rows.ravel()
    window = np.arange(hashes.size)
    start = window // n_win * w + window % n_win  # each window's first token in `flat`
    later = np.zeros(hashes.size, bool)
    pending = window
    while pending.size:  # one round unless hashes collide
        _, first, inverse = np.unique(hashes[pending], return_index=True, return_inverse=True)
        rep = pending[first][inverse.ravel()]  # the earliest pending window with the same hash
        same = rep == pending  # a representative is the first occurrence of its tokens
        other = np.flatnonzero(~same)
        same[other] = _windows_equal(flat, start[pending[other]], start[rep[other]], min_len)
        later[pending[same & (rep != pending)]] = True
        pending = pending[~same]  # collided with their representative: grouped again
    cover = np.bincount(start[later], minlength=n * w + 1) - np.bincount(start[later] + min_len, minlength=n * w + 1)
    return (np.cumsum(cover[:-1]) > 0).reshape(n, w)


def repack(rows: np.ndarray, removed: np.ndarray, width: int) -> np.ndarray:
    """(M, width), rows' dtype: every row's kept tokens (`removed` False), concatenated in row order
    and cut into as many full rows of `width` tokens as fit; the remainder (< width tokens) is dropped."""
    if removed.shape != rows.shape:
        raise OptionError(f"removed has shape {removed.shape}, rows {rows.shape}: pass the mask made from rows.")
    if width < 1:
        raise OptionError(f"width must be at least 1, got {width}.")
    kept = rows[~removed]  # row-major: row order, then position
    m = kept.size // width
    return kept[: m * width].reshape(m, width)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, in place: spreads a hash's entropy over all 64 bits."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _bands(num_perm: int, threshold: float) -> int:
    """The default band count: the largest r whose S-curve finds a pair at J = threshold with
    probability >= _RECALL, with b = num_perm // r bands."""
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= _RECALL:
            return b
    return num_perm


def _signatures(grams: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(N, num_perm) uint64 MinHash signatures of the rows' n-gram hashes `grams` (N, G)."""
    a, b = np.random.default_rng(seed).integers(0, 1 << 64, (2, num_perm), dtype=np.uint64, endpoint=False)
    x = grams >> np.uint64(32)  # (N, G): the n-gram hashes' top 32 bits
    sig = np.empty((grams.shape[0], num_perm), np.uint64)
    step = max(1, _CHUNK // (grams.shape[1] * num_perm))
    for s in range(0, grams.shape[0], step):
        h = x[s : s + step, :, None] * a  # (C, G, P), wrapping
        h += b
        sig[s : s + step] = h.min(axis=1)
    return sig


def _candidates(sig: np.ndarray, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows (i < j) with an identical band of their signatures, each pair once."""
    n, r = sig.shape[0], sig.shape[1] // bands
    banded = sig[:, : bands * r].reshape(n, bands, r)  # band j: signature columns j*r .. j*r + r - 1
    keys = np.zeros((n, bands), np.uint64)
    for k in range(r):
        keys *= _BASE
        keys += banded[:, :, k]
    keys = _mix(keys + np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).ravel()  # band in key
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, keys.size])
    group_start = np.repeat(starts, sizes)
    rank = np.arange(keys.size) - group_start  # position within the bucket
    later = np.repeat(np.arange(keys.size), rank)  # each member, once per earlier member of its bucket
    earlier = np.repeat(group_start, rank) + np.arange(later.size) - np.repeat(np.cumsum(rank) - rank, rank)
    i, j = order[earlier] // bands, order[later] // bands
    pairs = np.unique(np.minimum(i, j) * n + np.maximum(i, j))
    pairs = pairs[pairs // n != pairs % n]  # two bands of one row (a key collision)
    return pairs // n, pairs % n


def _jaccard(sets: np.ndarray, sizes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the n-gram sets of rows i and j (`sets`: sorted, unique, _PAD-filled)."""
    out = np.empty(i.size)
    step = max(1, _CHUNK // (2 * sets.shape[1]))
    for s in range(0, i.size, step):
        a, b = i[s : s + step], j[s : s + step]
        both = np.sort(np.concatenate([sets[a], sets[b]], axis=1), axis=1)  # (C, 2G)
        inter = ((both[:, 1:] == both[:, :-1]) & (both[:, 1:] != _PAD)).sum(axis=1)
        out[s : s + step] = inter / (sizes[a] + sizes[b] - inter)
    return out


def _first_of_cluster(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(n,) int: the lowest index in each index's connected component (union-find over edges i-j)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is the component's lowest index
    return np.array([find(x) for x in range(n)], dtype=np.int64)


def near_duplicate_rows(
    rows: np.ndarray,
    *,
    ngram: int = 5,
    threshold: float = 0.8,
    num_perm: int = 128,
    bands: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N,) bool, True = removed: every row but the first of its near-duplicate cluster (NearDup, as
    in the module docstring: n-gram Jaccard >= `threshold`, MinHash-LSH candidates, exact check)."""
    _check_rows(rows)
    if not 0 < threshold <= 1:
        raise OptionError(f"threshold must be in (0, 1], got {threshold}.")
    if ngram < 1 or num_perm < 1:
        raise OptionError(f"ngram and num_perm must be at least 1, got {ngram} and {num_perm}.")
    if bands is not None and not 1 <= bands <= num_perm:
        raise OptionError(f"bands must be between 1 and num_perm ({num_perm}), got {bands}.")
    n, w = rows.shape
    if n == 0 or w == 0:
        return np.zeros(n, bool)
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # distinct rows in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    distinct = rows[first[order]]  # (U, W)
    grams = _mix(_window_hashes(distinct, min(ngram, w))) >> np.uint64(1)  # (U, G), 63 bits: never _PAD
    sets = np.sort(grams, axis=1)
    sets[:, 1:][sets[:, 1:] == sets[:, :-1]] = _PAD  # a repeated n-gram counts once
    sets.sort(axis=1)
    sizes = (sets != _PAD).sum(axis=1)
    b = bands or _bands(num_perm, threshold)
    i, j = _candidates(_signatures(grams, num_perm, seed), b)
    near = _jaccard(sets, sizes, i, j) >= threshold
    root = _first_of_cluster(order.size, i[near], j[near])  # over distinct rows
    keeper = first[order][root][rank[inverse.ravel()]]  # (N,) the row kept for each row's cluster
    return keeper != np.arange(n)
