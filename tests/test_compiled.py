"""The dense kernel's compiled loops (`carto_cli/score/_dense.c`) against its numpy version, bit for bit.

The C loops replace `np.add.at`, the loss-matrix stores and the block loop of sums in
`carto_cli.score.dense._Sums`; they must leave every accumulator with exactly the numpy version's
values, for packed and unpacked layouts, one epoch or several per row group, float32 and float64
losses, the full state's steps, and losses at the edges of the probability table (negative, tiny,
beyond 32 nats). Then whole logs score the same with and without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carto_cli.io import logs
from carto_cli.score import compiled, dense
from carto_cli.score.rules import ScoreParams

pytestmark = pytest.mark.skipif(not compiled.available(), reason="the C extension was not built (no compiler?)")


def _sums(width: int, packed: bool, full: bool, dtype) -> dense._Sums:
    return dense._Sums(width, packed, full, losses=(0, 3, np.dtype(dtype)))


def _fill(sums: dense._Sums, batches: list, *, use_compiled: bool, monkeypatch) -> dense._Sums:
    monkeypatch.setenv("CARTO_NO_COMPILED", "" if use_compiled else "1")
    for idx, epoch, loss, correct, step in batches:
        sums.add(idx, epoch, loss, correct, step)
    return sums


def _batches(rng, width: int, n_batches: int, *, many: bool, loss_dtype, full: bool) -> list:
    out = []
    for b in range(n_batches):
        n = int(rng.integers(1, 3 * width))
        idx = rng.integers(0, width, n).astype(np.int64)
        epoch = rng.integers(0, 5, n).astype(np.int64) if many else b % 3
        loss = (rng.random(n) * 40 - 2).astype(loss_dtype)  # negative, ordinary and beyond 32 nats
        loss[rng.random(n) < 0.05] = 1e-12
        correct = rng.random(n) < 0.5
        step = rng.integers(0, 1000, n).astype(np.int64) if full else None
        out.append((idx, epoch, loss, correct, step))
    return out


@pytest.mark.parametrize("many", [False, True], ids=["one epoch per group", "epochs per row"])
@pytest.mark.parametrize("loss_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("full", [False, True], ids=["state", "full state"])
def test_add_rows_and_loss_sums_equal_the_numpy_version(monkeypatch, many: bool, loss_dtype, full: bool) -> None:
    rng = np.random.default_rng(7)
    width = 257  # odd: the two threads' halves differ in size
    batches = _batches(rng, width, 6, many=many, loss_dtype=loss_dtype, full=full)
    packed = not many  # the packed layout is only used with one epoch per row group
    sides = []
    for use_compiled in (True, False):
        sums = _fill(_sums(width, packed, full, loss_dtype), batches, use_compiled=use_compiled,
                     monkeypatch=monkeypatch)
        fields = sums.fields() if packed else None
        seen = (fields["seen"].to_numpy() if packed else sums.words).copy()
        sides.append((sums, seen, sums.loss_sums(seen, early_epochs=2)))
    (a, seen_a, sums_a), (b, seen_b, sums_b) = sides
    assert np.array_equal(a.words, b.words) and np.array_equal(seen_a, seen_b)
    if not packed:
        assert np.array_equal(a.n_seen, b.n_seen) and np.array_equal(a.corr, b.corr)
    assert np.array_equal(a.losses, b.losses)  # the stores, and the growth of the matrix to epoch 4
    if full:
        assert np.array_equal(a.first_step, b.first_step) and np.array_equal(a.last_step, b.last_step)
    for name in sums_a:
        assert np.array_equal(sums_a[name], sums_b[name]), name
    assert (a.rows, a.seen_total, a.corr_total) == (b.rows, b.seen_total, b.corr_total)
    assert sums_a["prob_sum"].any() and sums_a["late"].any()  # the check compares something


@pytest.mark.parametrize("by_epoch", [True, False], ids=["one epoch per part", "epochs mixed in parts"])
def test_a_log_scores_the_same_with_and_without_the_compiled_loops(tmp_path: Path, monkeypatch, by_epoch) -> None:
    from test_cartography_coordinates import shim_like_log  # repeats, gaps, NaNs, losses up to 30 nats

    from carto_cli.engines import local

    shim_like_log(tmp_path / "logs", by_epoch=by_epoch, seed=5)
    results = []
    for off in ("", "1"):
        monkeypatch.setenv("CARTO_NO_COMPILED", off)
        results.append(local.score(logs.open_logs([tmp_path / "logs"]), ScoreParams(early_epochs=2)))
    assert [r.method for r in results] == ["dense", "dense"]
    assert results[0].scores.equals(results[1].scores)
