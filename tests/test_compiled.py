"""The dense kernel's compiled loops (`carto_cli/score/_dense.c`) against its numpy version and the
Polars kernels, bit for bit.

The C loops replace `np.add.at` and the loss-matrix stores (`add_rows`), and the numpy sums over the
loss matrix plus Polars' `finalize` (`finish`, which writes the score columns straight from the
accumulators). Every score must come out with exactly the bits of the other paths: for packed and
unpacked layouts, one epoch or several per row group, float32 and float64 losses, irregular samples
(a repeat within an epoch, a gap), every never-learned policy, unsigned ids, several passes, and
losses at the edges of the probability table (negative, tiny, beyond 32 nats).
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_cartography_coordinates import shim_like_log  # repeats, gaps, NaNs, losses up to 30 nats

from carto_cli.engines import local
from carto_cli.io import artifacts, logs
from carto_cli.log import schema
from carto_cli.score import compiled, dense
from carto_cli.score.rules import ScoreParams

_BUILT = compiled._extension() is not None
needs_extension = pytest.mark.skipif(not _BUILT, reason="the C extension was not built (no C compiler here)")


def test_pip_built_the_extension_where_a_compiler_is() -> None:
    """`pip install` builds it wherever a C compiler and Python's headers are (`.ci/run` makes
    sure of the compiler): its absence there is a failure, not a skip of every test below."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here: carto runs the numpy version")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no Python headers here (python3-dev): carto runs the numpy version")
    assert _BUILT, "pip did not build carto_cli/score/_dense.c (see setup.py)"
    assert compiled._built("_extract") is not None, "pip did not build carto_cli/score/_extract.c (see setup.py)"


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


@needs_extension
@pytest.mark.parametrize("many", [False, True], ids=["one epoch per group", "epochs per row"])
@pytest.mark.parametrize("loss_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("full", [False, True], ids=["state", "full state"])
def test_add_rows_leaves_the_numpy_versions_accumulators(monkeypatch, many: bool, loss_dtype, full: bool) -> None:
    rng = np.random.default_rng(7)
    width = 257
    batches = _batches(rng, width, 6, many=many, loss_dtype=loss_dtype, full=full)
    packed = not many  # the packed layout is only used with one epoch per row group
    sides = []
    for off in ("", "1"):
        monkeypatch.setenv("CARTO_NO_COMPILED", off)
        assert compiled.available() is (off == "")
        sums = dense._Sums(width, packed, full, losses=(0, 3, np.dtype(loss_dtype)))
        for idx, epoch, loss, correct, step in batches:
            sums.add(idx, epoch, loss, correct, step)
        sides.append(sums)
    a, b = sides
    assert np.array_equal(a.words, b.words) and a.words.any()
    if not packed:
        assert np.array_equal(a.n_seen, b.n_seen) and np.array_equal(a.corr, b.corr)
    assert np.array_equal(a.losses, b.losses) and a.losses.shape[0] == (5 if many else 3)  # grown to epoch 4
    if full:
        assert np.array_equal(a.first_step, b.first_step) and np.array_equal(a.last_step, b.last_step)
    assert (a.rows, a.seen_total, a.corr_total) == (b.rows, b.seen_total, b.corr_total)


def _scores_both_ways(path: Path, monkeypatch, **params) -> tuple:
    """local.score with the compiled loops and with the numpy version (CARTO_NO_COMPILED=1)."""
    results = []
    for off in ("", "1"):
        monkeypatch.setenv("CARTO_NO_COMPILED", off)
        results.append(local.score(logs.open_logs([path]), ScoreParams(**params)))
    return tuple(results)


@needs_extension
@pytest.mark.parametrize("by_epoch", [True, False], ids=["one epoch per part", "epochs mixed in parts"])
@pytest.mark.parametrize("never_learned", ["zero", "max", "exclude"])
def test_a_log_scores_the_same_with_and_without_the_compiled_loops(tmp_path: Path, monkeypatch, by_epoch,
                                                                   never_learned) -> None:
    shim_like_log(tmp_path / "logs", by_epoch=by_epoch, seed=5)
    fast, slow = _scores_both_ways(tmp_path / "logs", monkeypatch, early_epochs=2, never_learned=never_learned)
    assert fast.method == slow.method == "dense"
    assert fast.samples_general == slow.samples_general > 0  # irregular samples were recounted and replaced
    assert fast.rows_dropped_nonfinite == slow.rows_dropped_nonfinite > 0
    assert fast.scores.equals(slow.scores) and fast.scores.schema == slow.scores.schema
    general = local.score(logs.open_logs([tmp_path / "logs"]),
                          ScoreParams(early_epochs=2, never_learned=never_learned, method="general"))
    assert fast.scores.equals(general.scores)


@needs_extension
def test_the_compiled_scores_in_several_passes(tmp_path: Path, monkeypatch) -> None:
    shim_like_log(tmp_path / "logs", by_epoch=True, seed=9)
    one = _scores_both_ways(tmp_path / "logs", monkeypatch)[0]
    monkeypatch.setattr(dense, "LOSS_MATRIX_BYTES", 5 * 4 * 7)  # 7 samples of 5 float32 epochs per pass
    fast, slow = _scores_both_ways(tmp_path / "logs", monkeypatch)
    assert fast.scores.equals(slow.scores) and fast.scores.equals(one.scores)


def _write(directory: Path, rows: list[tuple], *, unsigned: bool, by_epoch: bool, float64: bool) -> None:
    table = pa.table({
        schema.SAMPLE_ID: pa.array([r[0] for r in rows], pa.uint64() if unsigned else pa.int64()),
        schema.EPOCH: pa.array([r[1] for r in rows], pa.int32()),
        schema.STEP: pa.array(list(range(len(rows))), pa.int64()),
        schema.LOSS: pa.array([r[2] for r in rows], pa.float64() if float64 else pa.float32()),
        schema.CORRECT: pa.array([r[3] for r in rows], pa.bool_()),
    })
    directory.mkdir(parents=True)
    epochs = sorted({r[1] for r in rows}) if by_epoch else [None]
    for i, epoch in enumerate(epochs):
        part = table if epoch is None else table.filter(pa.compute.equal(table[schema.EPOCH], epoch))
        pq.write_table(part, directory / f"p{i}.parquet", row_group_size=7)


_loss = st.sampled_from([0.0, 1e-12, 0.25, 0.6931471805599453, 2.5, 31.99, 33.0, -0.5, float("nan")]) | st.floats(0, 40)


@needs_extension
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    presentations=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 5), _loss, st.booleans()),
                           min_size=1, max_size=60),
    base=st.sampled_from([0, 1000, 2**63 + 5]),
    by_epoch=st.booleans(),
    float64=st.booleans(),
    early_epochs=st.sampled_from([1, 2, 5, 70]),
    never_learned=st.sampled_from(["zero", "max", "exclude"]),
)
def test_any_small_log_scores_the_same_bits_on_every_path(tmp_path_factory, monkeypatch, presentations, base,
                                                          by_epoch, float64, early_epochs, never_learned) -> None:
    """Ids from `base` (beyond int64 for uint64 logs), repeats, gaps, NaN and edge losses: the
    compiled loops, the numpy version and the general Polars kernel agree bit for bit."""
    unsigned = base >= 2**63
    rows = [(base + sid, epoch, loss, correct) for sid, epoch, loss, correct in presentations]
    path = tmp_path_factory.mktemp("log") / "logs"
    _write(path, rows, unsigned=unsigned, by_epoch=by_epoch, float64=float64)
    params = {"early_epochs": early_epochs, "never_learned": never_learned}
    if all(np.isnan(r[2]) for r in rows):
        return  # no finite row: nothing to score
    fast, slow = _scores_both_ways(path, monkeypatch, **params)
    general = local.score(logs.open_logs([path]), ScoreParams(method="general", **params))
    assert fast.method == slow.method
    event(f"method {fast.method}")  # --hypothesis-show-statistics: most examples run the dense kernel
    assert fast.scores.schema == general.scores.schema
    assert fast.scores.equals(slow.scores) and fast.scores.equals(general.scores)


@needs_extension
def test_a_bucketed_log_scores_the_same_with_and_without_the_compiled_loops(tmp_path: Path, monkeypatch) -> None:
    """Per bucket the kernel indexes slots by (sample_id - min) / buckets: the compiled pass makes
    each id back from its slot with that stride."""
    from typer.testing import CliRunner

    from carto_cli.cli import app

    shim_like_log(tmp_path / "logs", by_epoch=True, seed=11)
    runner = CliRunner()
    assert runner.invoke(app, ["logs", "bucketize", str(tmp_path / "logs"), "--out", str(tmp_path / "b"),
                               "--buckets", "4"]).exit_code == 0
    frames = []
    for off in ("", "1"):
        monkeypatch.setenv("CARTO_NO_COMPILED", off)
        out = tmp_path / f"scores{off}.parquet"
        result = runner.invoke(app, ["score", str(tmp_path / "b"), "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        assert '"method_used": "dense"' in result.stdout
        # which build ran is said (the same bits either way), in the output and the provenance
        build = "numpy" if off else "compiled"
        assert f'"dense_build": "{build}"' in result.stdout
        assert artifacts.read_provenance(out)["dense_build"] == build
        frames.append(pl.read_parquet(out))
    assert frames[0].equals(frames[1]) and frames[0].height == 50
    flat = local.score(logs.open_logs([tmp_path / "logs"]), ScoreParams(method="general")).scores
    assert frames[0].drop("quadrant").sort(schema.SAMPLE_ID).equals(flat)
