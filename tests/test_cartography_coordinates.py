"""Dataset Cartography's coordinates in every scores file: confidence, variability, correctness.

Swayamdipta et al. (2020), with p = exp(-loss) for the probability of the gold label (for a
generative sample, the geometric mean of its target tokens' probabilities):

- confidence: the mean of p over the sample's presentations;
- variability: the population standard deviation (ddof 0, allenai/cartography's np.std) of p;
- correctness: n_correct / n_seen.

`HAND` below is a log whose answers can be worked out on paper (losses ln 2, ln 4, ... give p = 1/2,
1/4, ...); the other tests check every kernel, layout and engine against numpy on the raw rows and
against each other, bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_parts
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.engines import local
from carto_cli.io import artifacts, logs
from carto_cli.log import schema
from carto_cli.score import dense, rules, state

runner = CliRunner()
LN2, LN4 = math.log(2), math.log(4)

# sample_id -> [(epoch, step, loss, correct)]; p = exp(-loss) in the comments
HAND = {
    # p = 1/4, 1/2, 1: confidence 7/12; E[p^2] = (1/16 + 1/4 + 1) / 3 = 7/16, variance 7/16 - 49/144 = 7/72
    1: [(0, 1, LN4, False), (1, 11, LN2, False), (2, 21, 0.0, True)],
    # p = 1/2 twice: no variability
    2: [(0, 2, LN2, True), (1, 12, LN2, True)],
    # seen once, p = 3/4: variability 0
    3: [(0, 3, math.log(4 / 3), True)],
    # p = 1/2, 1: the population std of two values is half their distance, 1/4 (np.std, not ddof=1)
    4: [(0, 4, LN2, False), (1, 14, 0.0, True)],
    # the NaN row is dropped, correct flag and all: p = 1/2, 1/4 and 0 of 2 correct
    5: [(0, 5, LN2, False), (1, 15, float("nan"), True), (2, 25, LN4, False)],
    # a negative loss is no negative log-likelihood: it counts as p = 1
    6: [(0, 6, -0.5, True), (1, 16, LN2, False)],
    # 40 nats: p = 4e-18, 0 in fixed point
    7: [(0, 7, 40.0, False), (1, 17, 0.0, True)],
    # twice in epoch 0 (counted by the general path): p = 1, 1/4
    8: [(0, 8, 0.0, True), (0, 9, LN4, False)],
}
# sample_id -> (confidence, variability, correctness)
EXPECTED = {
    1: (7 / 12, math.sqrt(7 / 72), 1 / 3),
    2: (0.5, 0.0, 1.0),
    3: (0.75, 0.0, 1.0),
    4: (0.75, 0.25, 0.5),
    5: (0.375, 0.125, 0.0),
    6: (0.75, 0.25, 0.5),
    7: (0.5, 0.5, 0.5),
    8: (0.625, 0.375, 0.5),
}
TOLERANCE = 3.5e-10  # the documented bound (docs/scoring.md#dataset-cartographys-coordinates)


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def hand_rows() -> list[dict]:
    return [{"sample_id": sid, "epoch": e, "step": s, "loss": loss, "correct": c}
            for sid, presentations in HAND.items() for e, s, loss, c in presentations]


def score(path: Path, **params) -> local.ScoreResult:
    return local.score(logs.open_logs([path]), rules.ScoreParams(**params))


def assert_expected(scores: pl.DataFrame) -> None:
    rows = {r["sample_id"]: r for r in scores.iter_rows(named=True)}
    assert sorted(rows) == sorted(EXPECTED)
    for sid, (confidence, variability, correctness) in EXPECTED.items():
        assert abs(rows[sid]["confidence"] - confidence) <= TOLERANCE, sid
        assert abs(rows[sid]["variability"] - variability) <= TOLERANCE, sid
        assert rows[sid]["correctness"] == correctness, sid


@pytest.fixture
def hand_log(tmp_path: Path) -> Path:
    write_parts(tmp_path / "logs", hand_rows())
    return tmp_path / "logs"


@pytest.mark.parametrize("method", ["auto", "bitmask", "general"])
def test_hand_log_gives_the_hand_computed_coordinates(hand_log: Path, method: str) -> None:
    result = score(hand_log, method=method)
    assert result.method == {"auto": "dense"}.get(method, method)
    assert result.rows_dropped_nonfinite == 1
    assert_expected(result.scores)
    assert result.scores.columns[-3:] == ["confidence", "variability", "correctness"]


def test_every_engine_writes_the_same_coordinates(hand_log: Path, tmp_path: Path) -> None:
    """In memory (dense and general), bucket by bucket (dense and hash kernels) and `--update` in
    two folds: the same scores files, bit for bit."""
    files = {}
    for name, args in {"auto": [], "general": ["--method", "general"]}.items():
        files[name] = tmp_path / f"{name}.parquet"
        assert run("score", hand_log, "--out", files[name], *args).exit_code == 0
    bucketed = tmp_path / "bucketed"
    run("logs", "bucketize", hand_log, "--out", bucketed, "--buckets", "3")
    for name, args in {"buckets": [], "buckets-bitmask": ["--method", "bitmask"]}.items():
        files[name] = tmp_path / f"{name}.parquet"
        result = run("score", bucketed, "--out", files[name], "--json", *args)
        assert json.loads(result.stdout)["method_used"] == ("dense" if not args else "bitmask")
    # --update: epochs 0 and 1 first, epoch 2 folded in later
    growing = tmp_path / "growing"
    write_parts(growing, [r for r in hand_rows() if r["epoch"] < 2])
    files["update"] = tmp_path / "update.parquet"
    assert run("score", growing, "--out", files["update"], "--update").exit_code == 0
    write_parts(growing / "later", [r for r in hand_rows() if r["epoch"] == 2], n_files=1)
    result = run("score", growing, "--out", files["update"], "--update")
    assert "folded 1 new part(s)" in result.stderr
    frames = {name: pl.read_parquet(path).sort("sample_id") for name, path in files.items()}
    assert_expected(frames["auto"])
    for name, frame in frames.items():
        assert frame.equals(frames["auto"]), name


def test_prob_units_are_the_same_bits_in_numpy_and_polars() -> None:
    """The dense kernel (numpy) and the Polars kernels compute p with the same operations; each p is
    within 3.5e-10 of float64 exp(-loss)."""
    rng = np.random.default_rng(0)
    loss = np.concatenate([rng.uniform(-1, 35, 200_000), rng.exponential(1.0, 200_000).astype(np.float32),
                           [0.0, 2.0**-33, 1e-10, 22.18, 32.0, 33.0, 1e9, -1e9]])
    fixed = np.rint(loss * 2.0**32).astype(np.int64)
    from_numpy = state.prob_units(fixed)
    from_polars = pl.DataFrame({"loss": loss}).select(state.prob_units_expr(pl.col("loss"))).to_series().to_numpy()
    assert np.array_equal(from_numpy, from_polars)
    exact = np.exp(-np.maximum(loss, 0.0))
    assert np.abs(from_numpy / state.PROB_SCALE - exact).max() <= TOLERANCE
    assert from_numpy.min() == 0 and from_numpy.max() == state.PROB_SCALE


def shim_like_log(directory: Path, *, by_epoch: bool, seed: int) -> dict[int, np.ndarray]:
    """A random log with the shim's float32 loss (50 samples, 5 epochs, some twice or missing in
    an epoch, losses from -0.5 to 30 nats, NaNs); one epoch per part, or epochs mixed in parts.
    Returns each sample's finite float32 losses."""
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(5):
        for sid in range(50):
            for _ in range(rng.choice([0, 1, 1, 1, 1, 1, 1, 2])):
                loss = rng.choice([rng.exponential(1.5), rng.uniform(-0.5, 30), float("nan")], p=[0.85, 0.1, 0.05])
                rows.append((sid, epoch, epoch * 100 + len(rows) % 97, loss, bool(rng.random() < 0.5)))
    table = pa.table({schema.SAMPLE_ID: pa.array([r[0] for r in rows], pa.int64()),
                      schema.EPOCH: pa.array([r[1] for r in rows], pa.int32()),
                      schema.STEP: pa.array([r[2] for r in rows], pa.int64()),
                      schema.LOSS: pa.array([r[3] for r in rows], pa.float32()),
                      schema.CORRECT: pa.array([r[4] for r in rows], pa.bool_())})
    directory.mkdir(parents=True)
    if by_epoch:
        for epoch in range(5):
            pq.write_table(table.filter(pa.compute.equal(table[schema.EPOCH], epoch)), directory / f"e{epoch}.parquet")
    else:
        cuts = [0, len(rows) // 3, 2 * len(rows) // 3, len(rows)]
        for i in range(3):
            pq.write_table(table.slice(cuts[i], cuts[i + 1] - cuts[i]), directory / f"p{i}.parquet")
    losses = table[schema.LOSS].to_numpy(zero_copy_only=False)
    ids = table[schema.SAMPLE_ID].to_numpy()
    return {sid: losses[(ids == sid) & np.isfinite(losses)] for sid in np.unique(ids)}


@pytest.mark.parametrize("by_epoch", [True, False])
def test_coordinates_equal_numpy_on_the_raw_rows(tmp_path: Path, by_epoch: bool) -> None:
    """confidence = np.mean, variability = np.std (ddof 0) of float64 exp(-loss) over each sample's
    finite rows, within 3.5e-10, and every kernel gives the same bits."""
    raw = shim_like_log(tmp_path / "logs", by_epoch=by_epoch, seed=1)
    frames = []
    for method in ("auto", "bitmask", "general"):
        result = score(tmp_path / "logs", method=method)
        assert result.method == {"auto": "dense"}.get(method, method)
        frames.append(result.scores)
        rows = {r["sample_id"]: r for r in result.scores.iter_rows(named=True)}
        for sid, loss in raw.items():
            p = np.exp(-np.maximum(loss.astype(np.float64), 0.0))
            assert abs(rows[sid]["confidence"] - np.mean(p)) <= TOLERANCE, (method, sid)
            assert abs(rows[sid]["variability"] - np.std(p)) <= TOLERANCE, (method, sid)
    assert all(frame.equals(frames[0]) for frame in frames)


def test_dense_kernel_in_several_passes_and_with_a_growing_loss_matrix(tmp_path: Path, monkeypatch) -> None:
    """The loss matrix is bounded by LOSS_MATRIX_BYTES (more passes over the log), grows when a
    row group without epoch statistics holds a later epoch than the footers showed, and starts at
    the first epoch the footers show."""
    shim_like_log(tmp_path / "logs", by_epoch=False, seed=2)
    reference = score(tmp_path / "logs", method="general").scores
    monkeypatch.setattr(dense, "LOSS_MATRIX_BYTES", 5 * 4 * 7)  # 7 samples of 5 float32 epochs per pass
    passes = []
    real = dense._accumulate
    monkeypatch.setattr(dense, "_accumulate", lambda *a, **k: passes.append(1) or real(*a, **k))
    result = score(tmp_path / "logs")
    assert result.method == "dense" and len(passes) == 8  # 50 samples, 7 per pass
    assert result.scores.equals(reference)
    monkeypatch.undo()
    # no epoch statistics: the matrix starts with one epoch row and grows
    table = pq.read_table(tmp_path / "logs")
    bare = tmp_path / "bare"
    bare.mkdir()
    pq.write_table(table, bare / "p.parquet", write_statistics=[schema.SAMPLE_ID, schema.STEP, schema.LOSS])
    assert dense._loss_matrix(logs.open_logs([bare]))[:2] == (0, 1)
    result = score(bare)
    assert result.method == "dense" and result.scores.equals(reference)
    # parts holding only late epochs (what --update folds late in a run) take a row per epoch they hold
    late = tmp_path / "late"
    late.mkdir()
    pq.write_table(table.set_column(1, schema.EPOCH, pa.compute.add(table[schema.EPOCH], 40)), late / "p.parquet")
    assert dense._loss_matrix(logs.open_logs([late])) == (40, 5, np.dtype(np.float32))
    result = score(late, early_epochs=42)
    assert result.method == "dense" and result.scores.equals(score(late, method="general", early_epochs=42).scores)
    assert result.scores.drop("first_learned_epoch").equals(reference.drop("first_learned_epoch"))  # 40 epochs on


def test_update_refuses_a_state_saved_without_the_probability_sums(hand_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    assert run("score", hand_log, "--out", out, "--update").exit_code == 0
    saved = Path(f"{out}.state")
    frame, prov = artifacts.read(saved, "state")
    artifacts.write(frame.drop("prob_sum", "prob_sq_hi", "prob_sq_lo"), saved, prov)  # as carto wrote it before
    result = run("score", hand_log, "--out", out, "--update")
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("Error: ")
    assert "without the state column(s) prob_sum, prob_sq_hi, prob_sq_lo; rescore without --update" in message


def test_several_runs_pool_every_presentation(tmp_path: Path) -> None:
    """Two runs (seeds) in one log: the coordinates are over the presentations of both runs."""
    torch = pytest.importorskip("torch", reason="the logging shim needs the torch extra")
    from carto_cli import CartoLogger

    torch.set_num_threads(1)
    losses = {"a": [[LN2, 0.0], [LN4, LN2]], "b": [[0.0, 0.0], [LN4, LN4]]}  # run -> epoch -> sample 0, 1
    for run_id, epochs in losses.items():
        logger = CartoLogger(tmp_path / "logs", run_id=run_id, sketch_k=0, sketch_runs=0)
        for epoch, values in enumerate(epochs):
            logger.record(torch.tensor([0, 1]), epoch=epoch, step=epoch, loss=torch.tensor(values),
                          correct=torch.tensor([True, False]))
        logger.close()
    from carto_cli.engines import runs

    scores = runs.score_runs(logs.open_logs([tmp_path / "logs"]), rules.ScoreParams()).scores
    rows = {r["sample_id"]: r for r in scores.iter_rows(named=True)}
    for sid in (0, 1):
        p = np.exp(-np.array([losses[r][e][sid] for r in losses for e in (0, 1)], dtype=np.float32).astype(float))
        assert abs(rows[sid]["confidence"] - p.mean()) <= TOLERANCE
        assert abs(rows[sid]["variability"] - p.std()) <= TOLERANCE
        assert rows[sid]["correctness"] == (1.0 if sid == 0 else 0.0)
