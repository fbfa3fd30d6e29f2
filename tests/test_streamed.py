"""`carto score`'s streamed path (`carto_cli.score.streamed`): where the compiled dense kernel
reduces a log in one pass, only its accumulators are held, the thresholds are taken from
difficulty and memorization alone (`compiled.place`), and the score columns are made a chunk at a
time as the writer pulls them. The file it writes must be the in-memory path's frame (`score_logs`),
bit for bit, with every complication the in-memory path handles: irregular samples recounted by
the general path (in any chunk, across chunk boundaries), a memorization signal's values, every
never-learned policy, unsigned ids beyond 2^63, rows dropped for a non-finite loss, and no sample
at all; and logs it does not take must still be scored the same, in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cartography_coordinates import shim_like_log  # repeats, gaps, NaNs, losses up to 30 nats

from carto_cli import score_logs
from carto_cli.engines import local, pipeline
from carto_cli.io import logs
from carto_cli.log import schema
from carto_cli.score import compiled, dense, quadrants, streamed
from carto_cli.score.rules import ScoreParams

SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"  # with the memorization sketch
needs_extension = pytest.mark.skipif(compiled._extension() is None,
                                     reason="the C extension was not built (no C compiler here)")


def written(path: Path, out: Path, **params) -> tuple[pl.DataFrame, pipeline.ScoreRun]:
    """What `carto score` writes for the log at `path`, and what it reports."""
    run = pipeline.run_score(logs.open_logs([path]), ScoreParams(**params), out=out, inputs=[str(path)])
    return pl.read_parquet(out), run


def streams(path: Path, **params) -> bool:
    """Whether `carto score` takes the streamed path for this log."""
    return isinstance(local.score(logs.open_logs([path]), ScoreParams(**params), stream=True).scores,
                      streamed.StreamedScores)


@needs_extension
@pytest.mark.parametrize("chunk", [7, streamed.CHUNK], ids=["chunks of 7 samples", "one chunk"])
@pytest.mark.parametrize("by_epoch", [True, False], ids=["one epoch per part", "epochs mixed in parts"])
@pytest.mark.parametrize("never_learned", ["zero", "max", "exclude"])
def test_the_streamed_file_is_the_in_memory_frame(tmp_path: Path, monkeypatch, chunk, by_epoch, never_learned) -> None:
    monkeypatch.setattr(streamed, "CHUNK", chunk)
    shim_like_log(tmp_path / "logs", by_epoch=by_epoch, seed=11)
    params = {"early_epochs": 2, "never_learned": never_learned}
    assert streams(tmp_path / "logs", **params)
    scores, run = written(tmp_path / "logs", tmp_path / "scores.parquet", **params)
    expected = score_logs(tmp_path / "logs", **params)
    assert run.method == "dense" and run.samples_general > 0  # irregular samples were recounted
    assert run.rows_dropped_nonfinite > 0
    assert scores.equals(expected) and scores.schema == expected.schema
    # the report: the same thresholds as in memory, and the quadrants counted from the file
    thresholds = pipeline.Placement().thresholds(expected)
    assert run.thresholds == thresholds
    counts = expected.group_by(pl.col("quadrant").fill_null(quadrants.UNPLACED)).len()
    assert {row["quadrant"]: row["samples"] for row in run.table} == dict(counts.iter_rows())
    assert run.samples == expected.height and run.rows == expected["n_seen"].sum()


@needs_extension
def test_a_memorization_signal_is_streamed_too(tmp_path: Path, monkeypatch) -> None:
    """The shipped sample logs carry the sketch, so the default ranks by `extractable`: its values
    replace the memorization column chunk by chunk, and the thresholds read them."""
    monkeypatch.setattr(streamed, "CHUNK", 100)
    assert streams(SAMPLE_LOGS)
    scores, run = written(SAMPLE_LOGS, tmp_path / "scores.parquet")
    expected = score_logs(SAMPLE_LOGS)
    assert run.memorization != "forget events / transitions"
    assert scores.equals(expected)
    assert not scores.equals(score_logs(SAMPLE_LOGS, memorization="forgets"))


def unsigned_log(directory: Path, *, loss_scale: float = 1.0) -> None:
    """uint64 ids from 2^63 + 5 (beyond int64), 40 samples x 4 epochs, permuted every epoch, one
    sample missing from epoch 1 (a gap) and one seen twice in epoch 2 (a repeat); losses
    exponential times `loss_scale`, at most 2.5e8 nats (5 rows of those overflow the dense kernel's
    bound, 2^62 in fixed point, not the general path's int64 sums)."""
    rng = np.random.default_rng(3)
    directory.mkdir(parents=True)
    for epoch in range(4):
        slots = list(rng.permutation(40))
        if epoch == 1:
            slots.remove(6)
        if epoch == 2:
            slots.append(9)
        ids = np.array(slots, dtype=np.uint64) + np.uint64(2**63 + 5)
        pq.write_table(pa.table({
            schema.SAMPLE_ID: pa.array(ids, pa.uint64()),
            schema.EPOCH: pa.array(np.full(len(ids), epoch), pa.int32()),
            schema.STEP: pa.array(np.arange(len(ids)) + 100 * epoch, pa.int64()),
            schema.LOSS: pa.array(np.minimum(rng.exponential(1.0, len(ids)) * loss_scale, 2.5e8).astype(np.float32)),
            schema.CORRECT: pa.array(rng.random(len(ids)) < 0.5)}), directory / f"e{epoch}.parquet")


@needs_extension
def test_unsigned_ids_beyond_int64(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(streamed, "CHUNK", 8)
    unsigned_log(tmp_path / "logs")
    assert streams(tmp_path / "logs")
    scores, run = written(tmp_path / "logs", tmp_path / "scores.parquet")
    expected = score_logs(tmp_path / "logs")
    assert run.samples_general == 2  # the gap and the repeat
    assert scores.schema[schema.SAMPLE_ID] == pl.UInt64 and scores[schema.SAMPLE_ID].min() == 2**63 + 5
    assert scores.equals(expected)


@needs_extension
def test_the_lazy_frame_honours_a_projection_a_filter_and_a_limit(tmp_path: Path, monkeypatch) -> None:
    """Polars may push a selection, a predicate or a row limit into the source: each is applied."""
    monkeypatch.setattr(streamed, "CHUNK", 5)
    shim_like_log(tmp_path / "logs", by_epoch=True, seed=2)
    result = local.score(logs.open_logs([tmp_path / "logs"]), ScoreParams(early_epochs=2), stream=True)
    expected = score_logs(tmp_path / "logs", early_epochs=2).drop("quadrant")

    def query(frame: pl.LazyFrame) -> pl.DataFrame:
        return frame.filter(pl.col("n_seen") > 4).select("sample_id", "difficulty").head(6).collect()

    assert query(result.scores.lazy()).equals(query(expected.lazy()))
    assert result.scores.lazy().collect().equals(expected)  # and a frame can be pulled again


def test_logs_it_does_not_take_are_scored_the_same_in_memory(tmp_path: Path, monkeypatch) -> None:
    """Several passes (a loss matrix over LOSS_MATRIX_BYTES), no compiled extension, or a log the
    dense kernel declines (|loss| beyond its fixed-point bound): `carto score` scores in memory."""
    shim_like_log(tmp_path / "logs", by_epoch=True, seed=4)
    unsigned_log(tmp_path / "huge", loss_scale=1e9)  # |loss| * 2^32 * 5 rows beyond 2^62: the kernel declines
    with monkeypatch.context() as m:
        m.setattr(dense, "LOSS_MATRIX_BYTES", 5 * 4 * 7)  # 7 samples per pass
        assert not streams(tmp_path / "logs")
        scores, _ = written(tmp_path / "logs", tmp_path / "passes.parquet")
        assert scores.equals(score_logs(tmp_path / "logs"))
    with monkeypatch.context() as m:
        m.setenv("CARTO_NO_COMPILED", "1")
        assert not streams(tmp_path / "logs")
        scores, _ = written(tmp_path / "logs", tmp_path / "numpy.parquet")
        assert scores.equals(score_logs(tmp_path / "logs"))
    scores, run = written(tmp_path / "huge", tmp_path / "declined.parquet")
    assert run.method != "dense" and scores.equals(score_logs(tmp_path / "huge"))


@needs_extension
def test_a_log_of_non_finite_losses_writes_an_empty_file(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    pq.write_table(pa.table({schema.SAMPLE_ID: pa.array(np.arange(6), pa.int64()),
                             schema.EPOCH: pa.array(np.zeros(6), pa.int32()),
                             schema.STEP: pa.array(np.arange(6), pa.int64()),
                             schema.LOSS: pa.array(np.full(6, np.nan, dtype=np.float32)),
                             schema.CORRECT: pa.array(np.ones(6, dtype=bool))}), directory / "e0.parquet")
    scores, run = written(directory, tmp_path / "scores.parquet")
    expected = score_logs(directory)
    assert scores.height == expected.height == 0 and scores.schema == expected.schema
    assert run.rows_dropped_nonfinite == 6


@needs_extension
def test_ids_with_holes_and_chunks_without_a_sample(tmp_path: Path, monkeypatch) -> None:
    """Dense ids need not all be there: slots without a sample are left out of the thresholds and
    of the file, and a chunk of such slots writes nothing."""
    monkeypatch.setattr(streamed, "CHUNK", 3)
    rng = np.random.default_rng(8)
    ids = np.array([0, 1, 2, 9, 10, 11, 12, 20, 26, 27, 28, 29], dtype=np.int64)  # slots 3-8, 13-19, 21-25 empty
    directory = tmp_path / "logs"
    directory.mkdir()
    for epoch in range(3):
        order = rng.permutation(ids)
        pq.write_table(pa.table({
            schema.SAMPLE_ID: pa.array(order, pa.int64()),
            schema.EPOCH: pa.array(np.full(len(order), epoch), pa.int32()),
            schema.STEP: pa.array(np.arange(len(order)) + 100 * epoch, pa.int64()),
            schema.LOSS: pa.array(rng.exponential(1.0, len(order)).astype(np.float32)),
            schema.CORRECT: pa.array(rng.random(len(order)) < 0.6)}), directory / f"e{epoch}.parquet")
    assert streams(directory, early_epochs=1)
    scores, run = written(directory, tmp_path / "scores.parquet", early_epochs=1)
    assert scores[schema.SAMPLE_ID].to_list() == ids.tolist()
    assert scores.equals(score_logs(directory, early_epochs=1))
    assert run.thresholds == pipeline.Placement().thresholds(scores)
