"""Two loggers of one (run, rank) (issue 21): never taken for a crash and its resume.

With `torch.multiprocessing.spawn`, a logger built before `init_process_group` and without `$RANK`
was rank 0 in every process, and the replay rule read the concurrent processes as a crash and a
resume: 8 rows written, 4 kept, silently. Now the shim resolves a rank it was not given again at
its first `record`, refuses a second writer of one (directory, run, rank), and a reader refuses
attempts of one rank whose lifetimes overlap. The spawn tests run real processes on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import assert_one_line_error, run

torch = pytest.importorskip("torch", reason="the logging shim needs the torch extra")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from carto_cli import CartoLogger  # noqa: E402
from carto_cli.errors import LogFormatError, OptionError  # noqa: E402
from carto_cli.io import logs  # noqa: E402
from carto_cli.log import attempt, schema  # noqa: E402

WORLD = 2
ROWS = 4  # per process: 2 steps of 2 samples


def _record_rows(log: CartoLogger, index: int) -> None:
    for step in range(2):
        ids = torch.tensor([index * ROWS + 2 * step, index * ROWS + 2 * step + 1])
        log.record(ids, epoch=0, step=step, loss=torch.ones(2), correct=torch.ones(2, dtype=torch.bool))


def _spawned(index: int, out: str, mode: str, barrier) -> None:
    """One spawned process. `mode`: 'group' (init_process_group after the logger is built), 'alone'
    (no process group, no rank: both take rank 0) or 'no-locks' (the same on a filesystem without
    locks: the shim's claim cannot see the other process)."""
    os.environ.pop("RANK", None)
    os.environ.pop("WORLD_SIZE", None)
    if mode == "no-locks":
        attempt._lock = lambda path, holder: None  # as where fcntl is missing or the filesystem refuses locks
    log = CartoLogger(Path(out) / "logs", sketch_k=0, sketch_runs=0)  # built first, as many scripts do
    if mode == "group":
        dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=index, world_size=WORLD)
    barrier.wait()  # both loggers exist
    try:
        _record_rows(log, index)
        outcome = "ok"
    except OptionError as exc:
        outcome = str(exc)
    barrier.wait()  # both have recorded (or been refused): the lifetimes overlap
    log.close()
    (Path(out) / f"outcome-{index}.txt").write_text(outcome)
    if mode == "group":
        dist.destroy_process_group()


def spawn(tmp_path: Path, mode: str) -> list[str]:
    barrier = mp.get_context("spawn").Barrier(WORLD)
    mp.spawn(_spawned, args=(str(tmp_path), mode, barrier), nprocs=WORLD, join=True)
    return [(tmp_path / f"outcome-{i}.txt").read_text() for i in range(WORLD)]


def test_spawned_loggers_built_before_init_process_group_log_their_own_ranks(tmp_path: Path) -> None:
    assert spawn(tmp_path, "group") == ["ok", "ok"]
    logset = logs.open_logs([tmp_path / "logs"])
    assert logset.replayed_rows == 0 and logset.num_rows == WORLD * ROWS  # 8 written, 8 kept
    assert sorted(p.metadata[schema.META_RANK] for p in logset.parts) == ["0", "1"]
    assert {p.metadata[schema.META_WORLD_SIZE] for p in logset.parts} == {"2"}


def test_a_second_process_logging_the_same_rank_is_refused_at_its_first_record(tmp_path: Path) -> None:
    outcomes = spawn(tmp_path, "alone")
    assert sorted(outcomes)[1] == "ok", outcomes  # one of them logs
    [refused] = [o for o in outcomes if o != "ok"]
    assert "rank 0 of run" in refused and "is already being logged by another process" in refused
    assert "pass rank= (under torch.multiprocessing.spawn, the process index)" in refused
    assert logs.open_logs([tmp_path / "logs"]).num_rows == ROWS  # the refused one wrote nothing


def test_concurrent_writers_the_shim_could_not_stop_are_refused_on_read_not_taken_for_a_resume(
        tmp_path: Path) -> None:
    assert spawn(tmp_path, "no-locks") == ["ok", "ok"]
    with pytest.raises(LogFormatError, match=r"both logged rank 0 at the same time .* not a restart"):
        logs.open_logs([tmp_path / "logs"])
    assert_one_line_error(run("score", tmp_path / "logs", "--out", tmp_path / "s.parquet"),
                          "both logged rank 0 at the same time", "CartoLogger(rank=...)",
                          "into a directory of its own")


# ------------------------------------------------------------------ in one process


def test_a_second_logger_of_one_rank_in_one_process_waits_for_the_first_to_close(tmp_path: Path) -> None:
    first, second = CartoLogger(tmp_path, sketch_k=0, sketch_runs=0), CartoLogger(tmp_path, sketch_k=0, sketch_runs=0)
    _record_rows(first, 0)
    with pytest.raises(OptionError, match="already being logged by another CartoLogger of this process "
                                          r"\(close it first\)"):
        second.record([100], epoch=0, step=5, loss=[1.0], correct=[True])
    first.close()
    second.record([100], epoch=0, step=5, loss=[1.0], correct=[True])  # built before, recording after: it follows
    second.close()
    logset = logs.open_logs([tmp_path])
    assert logset.num_rows == ROWS + 1 and logset.replayed_rows == 0
    other = CartoLogger(tmp_path, rank=1, sketch_k=0, sketch_runs=0)  # another rank of the run: no conflict
    third = CartoLogger(tmp_path, sketch_k=0, sketch_runs=0)
    other.record([7], epoch=0, step=6, loss=[1.0], correct=[True])
    third.record([8], epoch=0, step=6, loss=[1.0], correct=[True])
    other.close()
    third.close()
    assert not list(tmp_path.glob(".carto-writer-*"))  # the claims' files go with them


def test_the_rank_is_resolved_again_at_the_first_record(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    log = CartoLogger(tmp_path, sketch_k=0, sketch_runs=0)
    assert log.rank == 0
    monkeypatch.setenv("RANK", "3")  # set by the time of the first record
    monkeypatch.setenv("WORLD_SIZE", "4")
    log.record([1], epoch=0, step=0, loss=[1.0], correct=[True])
    log.close()
    [path] = log.parts_written
    assert path.name.startswith("part-r00003-") and pq.read_table(path)["rank"].to_pylist() == [3]
    explicit = CartoLogger(tmp_path / "explicit", rank=1, sketch_k=0, sketch_runs=0)  # an explicit rank stays
    explicit.record([1], epoch=0, step=0, loss=[1.0], correct=[True])
    explicit.close()
    assert explicit.parts_written[0].name.startswith("part-r00001-")


# ------------------------------------------------------------------ the reader's rule, by hand


def write_part(directory: Path, name: str, attempt_id: str, started: int, written: int | None,
               steps: list[int]) -> None:
    """A part of attempt `attempt_id` of run 'r', rank 0, started and written at the given times."""
    metadata = {schema.META_RUN_ID: "r", schema.META_RANK: "0", schema.META_ATTEMPT: attempt_id,
                schema.META_ATTEMPT_STARTED: str(started)}
    if written is not None:
        metadata[schema.META_WRITTEN] = str(written)
    n = len(steps)
    table = pa.table({"sample_id": pa.array(range(n), pa.int64()), "epoch": pa.array([0] * n, pa.int32()),
                      "step": pa.array(steps, pa.int64()), "loss": pa.array([1.0] * n, pa.float32()),
                      "correct": pa.array([True] * n)})
    pq.write_table(table.replace_schema_metadata(metadata), directory / name)


@pytest.mark.parametrize(
    ("a_written", "b_written", "outcome"),
    [
        (300, 400, "refused"),  # b started (200) before a's last part (300): concurrent
        (200, 400, "refused"),  # a's last part at b's start: still overlapping
        (150, 400, "resume"),  # a ended before b started: b resumed it and replays a's steps >= 2
        (None, None, "resume"),  # older parts, no lifetime: the rule as before
        (None, 400, "resume"),  # a's end unknown: nothing to compare b's start with
        (300, None, "refused"),  # a still wrote after b started, whatever b's end
    ],
)
def test_overlapping_lifetimes_are_concurrent_writers_never_a_resume(tmp_path: Path, a_written, b_written,
                                                                      outcome: str) -> None:
    write_part(tmp_path, "part-r00000-a-000000.parquet", "a", 100, a_written, [0, 1, 2, 3])
    write_part(tmp_path, "part-r00000-b-000000.parquet", "b", 200, b_written, [2, 3])
    if outcome == "refused":
        with pytest.raises(LogFormatError, match="attempts a and b of run 'r' both logged rank 0 at the same time"):
            logs.open_logs([tmp_path])
    else:
        assert logs.open_logs([tmp_path]).replayed_rows == 2
