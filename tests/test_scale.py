"""The scale paths: time-associative state (incremental `--update`), the bucketed layout, and the
Ray engine, each checked against the same hand-made expected scores as the in-memory path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import TOKEN_EXPECTED, assert_hand_scores, hand_rows, write_parts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from carto_cli import CartoLogger
from carto_cli.cli import app
from carto_cli.engines import buckets, local
from carto_cli.engines import plan as planner
from carto_cli.errors import LogFormatError
from carto_cli.io import logs
from carto_cli.score import dense, rules, state

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def state_of(log_dir: Path, method: str = "general") -> pl.DataFrame:
    logset = logs.open_logs([log_dir])
    plan = planner.prepare(logset, rules.ScoreParams(method=method))
    return plan.kernel.state([str(p.path) for p in logset.parts])[0].sort("sample_id")


# ------------------------------------------------------------------ state is associative in time

presentation = st.fixed_dictionaries(
    {"sample_id": st.integers(0, 6), "epoch": st.integers(0, 4), "step": st.integers(0, 30),
     "loss": st.floats(0, 5, width=32), "correct": st.booleans()}
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(presentation, min_size=2, max_size=50), cut=st.integers(0, 31))
def test_merging_two_time_segments_equals_the_whole(tmp_path_factory, rows, cut) -> None:
    # split at a step boundary: everything before `cut` is the earlier segment
    earlier = [r for r in rows if r["step"] < cut]
    later = [r for r in rows if r["step"] >= cut]
    base = tmp_path_factory.mktemp("seg")
    write_parts(base / "all", rows)
    whole = state_of(base / "all")
    if not earlier or not later:
        return
    write_parts(base / "a", earlier)
    write_parts(base / "b", later)
    a, b = state_of(base / "a"), state_of(base / "b")
    merged = state.merge_states(a, b).sort("sample_id")
    assert merged.equals(whole)
    with pytest.MonkeyPatch.context() as mp:  # the hash join, where the positional alignment applied
        mp.setattr(state, "_aligned", lambda earlier, later: None)
        assert state.merge_states(a, b).sort("sample_id").equals(whole)


def test_merge_aligns_a_saved_state_of_contiguous_ids_by_position(tmp_path: Path) -> None:
    rows = hand_rows()  # ids 1..8, each seen before step 26
    write_parts(tmp_path / "a", [r for r in rows if r["step"] < 26])
    write_parts(tmp_path / "b", [r for r in rows if r["step"] >= 26])  # sample 8 absent
    a, b = state_of(tmp_path / "a"), state_of(tmp_path / "b")
    assert b["first_learned_epoch"].null_count() > 0  # nulls survive the alignment
    aligned = state._aligned(a, b.sample(fraction=1.0, shuffle=True, seed=1))
    assert aligned is not None and aligned.height == a.height
    write_parts(tmp_path / "all", rows)
    assert state.merge_states(a, b).equals(state_of(tmp_path / "all"))
    assert state._aligned(a.filter(pl.col("sample_id") != 4), b) is None  # ids 1..8 without 4: not contiguous


epoch_major = st.fixed_dictionaries(
    {"sample_id": st.integers(0, 9), "epoch": st.integers(0, 5), "offset": st.integers(0, 30),
     "loss": st.floats(0, 5, width=32), "correct": st.booleans()}
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(epoch_major, min_size=1, max_size=60), by_epoch=st.booleans())
def test_the_dense_full_state_equals_the_polars_state(tmp_path_factory, rows, by_epoch) -> None:
    """What --update saves, from the dense kernel (when the ids are dense) and from the Polars
    kernels: every state column, bit for bit."""
    for r in rows:  # steps in epoch order: the bitmask method applies
        r["step"] = r["epoch"] * 100 + r.pop("offset")
    base = tmp_path_factory.mktemp("full")
    if by_epoch:
        for e in sorted({r["epoch"] for r in rows}):
            write_parts(base / "logs" / f"e{e}", [r for r in rows if r["epoch"] == e], n_files=1)
    else:
        write_parts(base / "logs", rows)
    logset = logs.open_logs([base / "logs"])
    kernel = planner.prepare(logset, rules.ScoreParams()).kernel
    paths = [str(p.path) for p in logset.parts]
    dense, _ = local.full_state(kernel, logset.parts)
    polars, _ = kernel.state(paths)
    general, _ = planner.prepare(logset, rules.ScoreParams(method="general")).kernel.state(paths)
    assert dense.sort("sample_id").equals(polars.sort("sample_id"))
    assert dense.sort("sample_id").equals(general.sort("sample_id"))


def test_update_reduces_new_parts_with_the_dense_kernel(tmp_path: Path, monkeypatch) -> None:
    rows = hand_rows()  # ids 1..8: dense
    write_parts(tmp_path / "logs", [r for r in rows if r["epoch"] < 2])
    calls = []
    real = dense.state
    monkeypatch.setattr(dense, "state", lambda *a, **k: calls.append(k.get("full")) or real(*a, **k))
    out = tmp_path / "s.parquet"
    assert run("score", tmp_path / "logs", "--out", out, "--update").exit_code == 0
    write_parts(tmp_path / "logs" / "more", [r for r in rows if r["epoch"] >= 2])
    assert run("score", tmp_path / "logs", "--out", out, "--update").exit_code == 0
    assert calls == [True, True]  # the first run and the fold, each one dense pass for the full state
    run("score", tmp_path / "logs", "--out", tmp_path / "full.parquet")
    assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "full.parquet"))


def test_merge_refuses_presentations_that_go_back_in_time(tmp_path: Path) -> None:
    rows = hand_rows()
    write_parts(tmp_path / "a", [r for r in rows if r["step"] >= 20])
    write_parts(tmp_path / "b", [r for r in rows if r["step"] < 20])
    with pytest.raises(LogFormatError, match="do not come after the scored ones"):
        state.merge_states(state_of(tmp_path / "a"), state_of(tmp_path / "b"))


# ------------------------------------------------------------------ incremental scoring


def test_update_folds_new_parts_and_equals_a_full_run(tmp_path: Path) -> None:
    rows = hand_rows()
    log_dir = tmp_path / "logs"
    write_parts(log_dir, [r for r in rows if r["epoch"] < 2], seed=1)
    out = tmp_path / "scores.parquet"
    first = run("score", log_dir, "--out", out, "--update")
    assert first.exit_code == 0
    assert "Note: no saved state: scored all 3 part(s)" in first.stderr
    # training goes on: epochs 2 and 3 arrive as new parts
    for i, r in enumerate(r for r in rows if r["epoch"] >= 2):
        pl.DataFrame([r]).write_parquet(log_dir / f"part-r00000-later-{i:06d}.parquet")
    second = run("score", log_dir, "--out", out, "--update")
    assert second.exit_code == 0
    assert "Note: folded 12 new part(s) (12 rows) into the saved state" in second.stderr
    assert_hand_scores(pl.read_parquet(out))
    full = tmp_path / "full.parquet"
    run("score", log_dir, "--out", full)
    assert pl.read_parquet(out).equals(pl.read_parquet(full))
    third = run("score", log_dir, "--out", out, "--update")
    assert "Note: folded 0 new part(s) (0 rows)" in third.stderr
    assert pl.read_parquet(out).equals(pl.read_parquet(full))


def test_update_refuses_changed_parts_options_and_percentiles(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    parts = write_parts(log_dir, hand_rows())
    out = tmp_path / "scores.parquet"
    assert run("score", log_dir, "--out", out, "--update").exit_code == 0
    result = run("score", log_dir, "--out", out, "--update", "--early-epochs", "3")
    assert result.exit_code == 1 and "was made with early_epochs=2" in result.stderr
    result = run("score", log_dir, "--out", out, "--update", "--correct-from", "loss")
    assert result.exit_code == 1 and "--update needs a fixed correctness threshold" in result.stderr
    parts[0].unlink()
    result = run("score", log_dir, "--out", out, "--update")
    assert result.exit_code == 1 and "was scored before but is gone" in result.stderr


# ------------------------------------------------------------------ bucketed layout


def test_bucketize_then_score_gives_the_hand_scores(hand_log: Path, tmp_path: Path) -> None:
    bucketed = tmp_path / "bucketed"
    result = run("logs", "bucketize", hand_log, "--out", bucketed, "--buckets", "3", "--json")
    assert json.loads(result.stdout)["rows"] == 27
    assert sorted(p.name for p in bucketed.iterdir()) == ["bucket=0", "bucket=1", "bucket=2"]
    for path in bucketed.rglob("*.parquet"):  # every sample's rows are in its own bucket
        ids = pl.read_parquet(path)["sample_id"]
        assert (ids % 3 == buckets.bucket_of_path(path)).all()
    for method in ("bitmask", "general"):
        out = tmp_path / f"{method}.parquet"
        result = run("score", bucketed, "--out", out, "--method", method)
        assert result.exit_code == 0
        assert "in 3 part(s) (3 buckets, local engine)" in result.stderr
        scores = pl.read_parquet(out)
        assert_hand_scores(scores)
        # ordered by (bucket, sample_id)
        assert scores["sample_id"].to_list() == [3, 6, 1, 4, 7, 2, 5, 8]
    # auto: the dense kernel in every bucket (ids / 3 are dense), the same scores
    result = run("score", bucketed, "--out", tmp_path / "auto.parquet", "--json")
    assert json.loads(result.stdout)["method_used"] == "dense"
    assert pl.read_parquet(tmp_path / "auto.parquet").equals(scores)
    # the quadrants match the in-memory path too
    run("score", hand_log, "--out", tmp_path / "flat.parquet")
    flat = pl.read_parquet(tmp_path / "flat.parquet")
    assert scores.sort("sample_id").equals(flat)


def test_dense_kernel_in_several_passes_per_bucket(hand_log: Path, tmp_path: Path, monkeypatch) -> None:
    run("logs", "bucketize", hand_log, "--out", tmp_path / "bucketed", "--buckets", "3")
    monkeypatch.setattr(dense, "SAMPLES_PER_PASS", 1)  # one sample per pass: ids 1, 4, 7 in 3 passes
    result = run("score", tmp_path / "bucketed", "--out", tmp_path / "s.parquet", "--json")
    assert json.loads(result.stdout)["method_used"] == "dense"
    assert_hand_scores(pl.read_parquet(tmp_path / "s.parquet"))


def test_a_bucket_off_the_stride_falls_back_to_the_hash_kernel(hand_log: Path, tmp_path: Path) -> None:
    bucketed = tmp_path / "bucketed"
    run("logs", "bucketize", hand_log, "--out", bucketed, "--buckets", "6")
    # without bucket 5 the log looks like 5 buckets: ids 1 and 7 (bucket 1), 2 and 8 (bucket 2)
    # are not equal mod 5; buckets 0, 3 and 4 hold one sample each
    shutil.rmtree(bucketed / "bucket=5")
    result = run("score", bucketed, "--out", tmp_path / "auto.parquet", "--json")
    assert json.loads(result.stdout)["method_used"] == "dense in 3 of 5 buckets, bitmask in the others"
    run("score", bucketed, "--out", tmp_path / "general.parquet", "--method", "general")
    assert pl.read_parquet(tmp_path / "auto.parquet").equals(pl.read_parquet(tmp_path / "general.parquet"))


def test_shim_writes_the_bucketed_layout(tmp_path: Path) -> None:
    with CartoLogger(tmp_path / "logs", buckets=4) as log:
        for epoch in range(2):
            log.record(list(range(-2, 8)), epoch=epoch, step=epoch, loss=[1.0] * 10, correct=[True] * 10)
    dirs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert dirs == ["bucket=0", "bucket=1", "bucket=2", "bucket=3"]
    rows = pl.read_parquet(tmp_path / "logs" / "bucket=2" / "*.parquet")
    assert sorted(set(rows["sample_id"])) == [-2, 2, 6]  # -2 mod 4 = 2 (floored)


def test_bucketize_refuses_an_existing_output(hand_log: Path, tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    result = run("logs", "bucketize", hand_log, "--out", tmp_path / "exists")
    assert result.exit_code == 1 and "already exists" in result.stderr


def test_mixing_bucketed_and_flat_parts_is_refused(hand_log: Path, tmp_path: Path) -> None:
    run("logs", "bucketize", hand_log, "--out", tmp_path / "bucketed", "--buckets", "2")
    result = run("score", hand_log, tmp_path / "bucketed", "--out", tmp_path / "s.parquet")
    assert result.exit_code == 1 and "part outside any bucket=<b>/ directory" in result.stderr


# ------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_exactly_the_local_scores(ray_instance, hand_log: Path, tmp_path: Path) -> None:
    bucketed = tmp_path / "bucketed"
    # 7 buckets: more than the 4 tasks (2 per CPU) the engine keeps in flight, so it refills
    run("logs", "bucketize", hand_log, "--out", bucketed, "--buckets", "7")
    local, remote = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert run("score", bucketed, "--out", local).exit_code == 0
    result = run("score", bucketed, "--out", remote, "--engine", "ray", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload["buckets"], payload["engine"]) == (7, "ray")
    assert payload["method_used"] == "dense"  # the dense kernel ran in the Ray tasks
    assert_hand_scores(pl.read_parquet(remote))
    assert pl.read_parquet(remote).equals(pl.read_parquet(local))
    # a log that is not bucketed runs as one Ray task
    flat = tmp_path / "flat.parquet"
    assert run("score", hand_log, "--out", flat, "--engine", "ray").exit_code == 0
    assert_hand_scores(pl.read_parquet(flat))


def test_ray_engine_computes_a_memorization_signal_in_its_tasks(ray_instance, token_log: Path, tmp_path: Path) -> None:
    run("logs", "bucketize", token_log, "--out", tmp_path / "bucketed", "--buckets", "2")
    out = tmp_path / "ray.parquet"
    result = run("score", tmp_path / "bucketed", "--out", out, "--engine", "ray", "--memorization", "token-drop",
                 "--drop-k", "2")
    assert result.exit_code == 0, result.output
    got = dict(pl.read_parquet(out).select("sample_id", "memorization").iter_rows())
    assert got == TOKEN_EXPECTED[2]


def test_ray_engine_names_a_damaged_part_in_one_line(ray_instance, tmp_path: Path) -> None:
    """A part found damaged inside a Ray task (a page that fails its checksum) reached the user as
    Ray's multi-line traceback around the task's error; it is that error's one line."""
    import pyarrow.parquet as pq

    rows = [{"sample_id": sid, "epoch": epoch, "step": 10 * epoch + sid, "loss": 1.0, "correct": True,
             "top_pos": [sid % 5, 2], "top_loss": [2.0, 1.0], "hit_runs": [epoch, 2, 0, 1]}
            for epoch in range(4) for sid in range(8)]
    schema = {"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32, "correct": pl.Boolean,
              "top_pos": pl.List(pl.UInt16), "top_loss": pl.List(pl.Float16), "hit_runs": pl.List(pl.UInt16)}
    write_parts(tmp_path / "logs", rows, schema=schema)
    run("logs", "bucketize", tmp_path / "logs", "--out", tmp_path / "bucketed", "--buckets", "2")
    part = sorted((tmp_path / "bucketed").rglob("*.parquet"))[0]
    pq.write_table(pq.read_table(part), part, compression="none", use_dictionary=False, write_page_checksum=True)
    file = pq.ParquetFile(part)
    chunk = file.metadata.row_group(0).column(file.schema_arrow.names.index("hit_runs"))  # read in the task only
    data = bytearray(part.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 2] ^= 0x04
    part.write_bytes(bytes(data))
    result = runner.invoke(app, ["score", str(tmp_path / "bucketed"), "--out", str(tmp_path / "s.parquet"),
                                 "--engine", "ray"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {part}: unreadable (could not verify page integrity")


@pytest.mark.parametrize("method", ["bitmask", "general"])
def test_reducing_in_several_passes_gives_the_same_state(hand_log: Path, method: str) -> None:
    logset = logs.open_logs([hand_log])
    kernel = planner.prepare(logset, rules.ScoreParams(method=method)).kernel
    paths = [str(p.path) for p in logset.parts]
    one, general_one = kernel.state(paths)
    three, general_three = kernel.state(paths, passes=3)
    assert three.sort("sample_id").equals(one.sort("sample_id"))
    assert general_three == general_one
    assert_hand_scores(state.finalize(three, never_learned="zero"))
