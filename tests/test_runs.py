"""Runs, restarts and masks: what a real training run logs twice or must not log, and how it counts.

- `keep=`: rows masked out (a distributed sampler's padding duplicates) are never written.
- A restarted run replays the steps after its checkpoint; the rows of the crashed attempt for those
  steps are replays, and only the latest attempt counts (`carto_cli.io.replays`).
- Several runs (seeds) in one log: forget events counted per run, then summed with the runs'
  transitions (`carto_cli.engines.runs`); `--run` scores one.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
from test_cli import assert_one_line_error, run

torch = pytest.importorskip("torch", reason="the logging shim needs the torch extra")

from carto_cli import CartoLogger  # noqa: E402
from carto_cli.engines import runs  # noqa: E402
from carto_cli.io import logs  # noqa: E402
from carto_cli.score.rules import ScoreParams  # noqa: E402

torch.set_num_threads(1)
N = 6  # samples, all presented at every step (one "epoch" per step keeps the arithmetic visible)


def value(run: int, sample: int, step: int) -> tuple[float, bool]:
    """A made-up (loss, correct) for a presentation: differs by run, sample and step."""
    loss = 0.1 + ((run * 7 + sample * 3 + step * 5) % 11) / 4
    return loss, (run + sample + step) % 3 != 0


def log_steps(out: Path, steps: range, *, run: int = 0, run_id: str | None = None, rank: int = 0,
              attempt_values: int | None = None) -> CartoLogger:
    """One logger (one attempt) logging every sample at each step; `attempt_values` shifts the
    values, so that a test can tell which attempt's rows were counted."""
    shift = run if attempt_values is None else attempt_values
    logger = CartoLogger(out, run_id=run_id, rank=rank, sketch_k=0, sketch_runs=0)
    for step in steps:
        pairs = [value(shift, s, step) for s in range(N)]
        logger.record(torch.arange(N), epoch=step, step=step,
                      loss=torch.tensor([p[0] for p in pairs]), correct=torch.tensor([p[1] for p in pairs]))
    logger.close()
    return logger


def scores_of(*paths: Path, **params) -> pl.DataFrame:
    return runs.score_runs(logs.open_logs(list(paths)), ScoreParams(early_epochs=2, **params)).scores


# ------------------------------------------------------------------ keep masks


def test_keep_mask_leaves_out_masked_rows_on_both_record_paths(tmp_path: Path) -> None:
    logger = CartoLogger(tmp_path, sketch_k=0, sketch_runs=0)
    logger.record(torch.tensor([10, 11, 12]), epoch=0, step=0, loss=torch.ones(3),
                  correct=torch.ones(3, dtype=torch.bool), keep=torch.tensor([True, False, True]))
    logits, labels = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    logger.record(torch.tensor([20, 21, 22]), epoch=0, step=1, logits=logits, labels=labels,
                  keep=torch.tensor([False, True, False]))
    logger.record(torch.tensor([30]), epoch=0, step=2, loss=torch.ones(1),
                  correct=torch.ones(1, dtype=torch.bool), keep=torch.tensor([False]))
    logger.close()
    frame = pl.read_parquet(logger.parts_written).sort("step")
    assert frame["sample_id"].to_list() == [10, 12, 21]
    assert frame["step"].to_list() == [0, 0, 1]


def test_keep_mask_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    with CartoLogger(tmp_path) as logger, pytest.raises(Exception, match="_keep has 2 rows but the batch has 3"):
        logger.record(torch.arange(3), epoch=0, step=0, loss=torch.ones(3),
                      correct=torch.ones(3, dtype=torch.bool), keep=torch.tensor([True, False]))


# ------------------------------------------------------------------ run ids


def test_default_run_id_is_stable_per_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARTO_RUN_ID", raising=False)
    first, again, other = CartoLogger(tmp_path / "a"), CartoLogger(tmp_path / "a"), CartoLogger(tmp_path / "b")
    assert first.run_id == again.run_id != other.run_id
    assert first.run_id.startswith("a-")
    assert first.attempt != again.attempt  # each logger is its own attempt
    monkeypatch.setenv("CARTO_RUN_ID", "seed-3")
    assert CartoLogger(tmp_path / "c").run_id == "seed-3"
    for logger in (first, again, other):
        logger.close()


# ------------------------------------------------------------------ restarts


def test_a_restart_counts_each_presentation_once_the_latest_attempt_wins(tmp_path: Path) -> None:
    crashed, straight = tmp_path / "crashed", tmp_path / "straight"
    # attempt 1 logged steps 0..7 then died; its checkpoint was at step 4, so attempt 2 replays 5..9
    log_steps(crashed, range(0, 8), run_id="r", attempt_values=0)
    log_steps(crashed, range(5, 10), run_id="r", attempt_values=1)
    # the same presentations, each once: attempt 1's values before step 5, attempt 2's after
    log_steps(straight, range(0, 5), run_id="s", attempt_values=0)
    log_steps(straight, range(5, 10), run_id="s", attempt_values=1)
    logset = logs.open_logs([crashed])
    assert logset.replayed_rows == 3 * N  # steps 5, 6, 7 of attempt 1
    assert logset.num_rows == 10 * N
    restarted = scores_of(crashed)
    assert restarted.equals(scores_of(straight))
    assert restarted["n_seen"].to_list() == [10] * N


def test_replays_are_matched_per_rank(tmp_path: Path) -> None:
    # rank 1 starts after rank 0 at the same steps: a second rank, not a restart
    log_steps(tmp_path, range(0, 4), run_id="r", rank=0)
    log_steps(tmp_path, range(0, 4), run_id="r", rank=1)
    logset = logs.open_logs([tmp_path])
    assert logset.replayed_rows == 0 and logset.num_rows == 8 * N


def test_a_part_straddling_the_restart_is_trimmed_and_the_input_untouched(tmp_path: Path) -> None:
    first = log_steps(tmp_path, range(0, 6), run_id="r")  # one part holding steps 0..5
    before = first.parts_written[0].read_bytes()
    log_steps(tmp_path, range(3, 6), run_id="r")
    logset = logs.open_logs([tmp_path])
    trimmed = [p for p in logset.parts if p.origin is not None]
    assert len(trimmed) == 1 and trimmed[0].origin == first.parts_written[0] and trimmed[0].num_rows == 3 * N
    assert first.parts_written[0].read_bytes() == before
    assert logs.open_logs([tmp_path]).digest() == logset.digest()  # same log, same provenance digest


def test_parts_without_attempt_metadata_are_never_dropped(tmp_path: Path) -> None:
    from conftest import hand_rows, write_parts  # hand-made parts carry no carto metadata

    write_parts(tmp_path, hand_rows())
    logset = logs.open_logs([tmp_path])
    assert logset.replayed_rows == 0 and runs.run_ids(logset) == [""]


def test_summary_and_score_report_the_replays(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_steps(log_dir, range(0, 4), run_id="r")
    log_steps(log_dir, range(2, 4), run_id="r")
    result = run("logs", "summary", log_dir)
    assert f"{2 * N:,} rows left out as replays of a restart" in result.stderr
    result = run("score", log_dir, "--out", tmp_path / "s.parquet")
    assert result.exit_code == 0 and f"left out {2 * N} row(s) as replays" in result.stderr
    result = run("score", log_dir, "--out", tmp_path / "u.parquet", "--update", "--threshold", "0.5",
                 "--correct-from", "loss")
    assert_one_line_error(result, "replayed by a restarted run", "rescore without --update")


# ------------------------------------------------------------------ several runs


def test_several_runs_are_counted_per_run_then_summed(tmp_path: Path) -> None:
    for seed in (0, 1):
        log_steps(tmp_path, range(0, 6), run=seed, run_id=f"seed{seed}")
    combined = scores_of(tmp_path).sort("sample_id")
    per_run = [runs.score_runs(runs.select_run(logs.open_logs([tmp_path]), f"seed{seed}"), ScoreParams(early_epochs=2))
               .scores.sort("sample_id") for seed in (0, 1)]
    for sample in range(N):
        a, b = (r.row(sample, named=True) for r in per_run)
        c = combined.row(sample, named=True)
        assert c["n_seen"] == a["n_seen"] + b["n_seen"] == 12
        assert c["forget_events"] == a["forget_events"] + b["forget_events"]
        # pooled transitions: 5 per run, not 11
        if c["n_correct"]:
            assert math.isclose(c["memorization"], (a["forget_events"] + b["forget_events"]) / 10)
        # the mean early loss over both runs' early presentations (epochs 0 and 1 of each)
        early = [value(seed, sample, step)[0] for seed in (0, 1) for step in (0, 1)]
        assert math.isclose(c["difficulty"], sum(early) / 4, rel_tol=1e-6)  # losses are stored as float32
    # by hand for sample 0 of seed 0: correct at steps where (0 + 0 + step) % 3 != 0 -> F T T F T T
    assert per_run[0].row(0, named=True)["forget_events"] == 1


def test_run_selects_one_run_and_an_unknown_run_is_one_line(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    for seed in (0, 1):
        log_steps(log_dir, range(0, 4), run=seed, run_id=f"seed{seed}")
    result = run("score", log_dir, "--out", tmp_path / "s.parquet", "--run", "seed1")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "s.parquet")["n_seen"].to_list() == [4] * N
    assert_one_line_error(run("score", log_dir, "--out", tmp_path / "t.parquet", "--run", "seed7"),
                          "--run 'seed7'", "'seed0', 'seed1'")
    assert_one_line_error(run("score", log_dir, "--out", tmp_path / "t.parquet", "--engine", "ray"),
                          "one run at a time", "--run ID")


def test_an_attempt_that_wrote_only_an_empty_part_replays_nothing(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    first = log_steps(tmp_path, range(0, 4), run_id="r")
    later = log_steps(tmp_path, range(2, 4), run_id="r")
    # the later attempt's part, emptied (a writer of its own could leave one): it re-ran no step
    table = pq.read_table(later.parts_written[0])
    pq.write_table(table.slice(0, 0).replace_schema_metadata(table.schema.metadata), later.parts_written[0])
    logset = logs.open_logs([tmp_path])
    assert logset.replayed_rows == 0 and logset.num_rows == 4 * N
    assert first.parts_written[0] in {p.path for p in logset.parts}


def test_bucketize_refuses_several_runs_rather_than_merging_them(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    for seed in (0, 1):
        log_steps(log_dir, range(0, 3), run=seed, run_id=f"seed{seed}")
    assert_one_line_error(run("logs", "bucketize", log_dir, "--out", tmp_path / "b", "--buckets", 2),
                          "2 runs ('seed0', 'seed1')", "bucketize each run's parts on their own")
    assert not (tmp_path / "b").exists()
