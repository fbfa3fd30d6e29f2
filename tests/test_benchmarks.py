"""The benchmark scripts on tiny workloads: they run, and their cross-checks agree.

Timings are not checked here (the scripts print them as ratios against a baseline of the same run;
see benchmarks/README.md). What is checked is what the scripts assert about correctness: every
contender's per-sample output against carto's (DuckDB's SQL among them), bucketed scores against
the hash kernel's, `--update` against a full rescore, the shim's logged values against a float64
reference, and the default signal's kernel against its Polars definition.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def bench(script: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "logs"
    bench("make_bench_logs.py", "--samples", 3000, "--epochs", 4, "--out", out, "--batch-size", 64)
    return out


def test_make_bench_logs_writes_one_part_per_rank_and_epoch(small_logs: Path) -> None:
    import polars as pl

    parts = sorted(small_logs.glob("*.parquet"))
    assert len(parts) == 8
    frame = pl.read_parquet(parts)
    assert frame.height == 12_000 and frame["sample_id"].n_unique() == 3000


def test_bench_score_contenders_agree_with_carto(small_logs: Path) -> None:
    pytest.importorskip("duckdb")
    result = last_json(bench("bench_score.py", "--logs", small_logs, "--timeout", 120))
    assert all(run["status"] == "ok" for run in result["best"].values())
    for name, agreement in result["agreement"].items():  # the DuckDB queries, polars, carto-bitmask, -general
        assert agreement["samples"] == 3000, name
        assert agreement["forget_events_mismatches"] == 0 and agreement["n_seen_mismatches"] == 0, name
        assert agreement["difficulty_beyond_tolerance"] == 0, name
    assert set(result["agreement"]) == {"duckdb", "duckdb-window", "duckdb-bitmask", "duckdb-full", "polars",
                                        "carto-bitmask", "carto-general"}
    # like for like: duckdb-full's other columns agree too; quadrants may differ only at a threshold
    full = result["full_agreement"]
    assert full["quadrant_mismatches_off_threshold"] == 0 and full["confidence_beyond_tolerance"] == 0, full
    assert all(full[f"{name}_mismatches"] == 0 for name in ("n_correct", "first_learned_epoch", "ever_learned"))
    goals = {goal["ratio"].split(" (")[0] for goal in result["goals"]}
    assert goals >= {"carto/best-duckdb", "carto/duckdb-full wall_s"}
    assert set(result["median_ratios"]) >= {"carto/duckdb-full wall_s"}


def bench_module(name: str, monkeypatch):
    """A benchmark script imported as a module (its folder on sys.path, as when it is run as a file)."""
    import importlib

    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(name)


def test_bench_score_agrees_only_within_the_difficulty_tolerance(tmp_path: Path, monkeypatch) -> None:
    import polars as pl

    bench_score = bench_module("bench_score", monkeypatch)
    tol = bench_score.DIFFICULTY_TOLERANCE

    def scores(name: str, difficulty: list) -> Path:
        path = tmp_path / f"{name}.parquet"
        pl.DataFrame({"sample_id": [1, 2, 3], "forget_events": [0, 1, 2], "n_seen": [4, 4, 4],
                      "difficulty": difficulty}, schema_overrides={"difficulty": pl.Float64}).write_parquet(path)
        return path

    reference = scores("reference", [1.0, 2.0, None])
    close = bench_score.compare(reference, scores("close", [1.0 + tol / 2, 2.0 - tol / 2, None]))
    assert close["difficulty_beyond_tolerance"] == 0 and bench_score.agrees(close)
    off = bench_score.compare(reference, scores("off", [1.0, 2.0 + 3 * tol, None]))
    assert off["difficulty_beyond_tolerance"] == 1
    assert off["difficulty_max_abs_diff"] == pytest.approx(3 * tol)
    assert not bench_score.agrees(off)  # counts and ids all equal: only the difficulty disagrees
    null = bench_score.compare(reference, scores("null", [1.0, 2.0, 3.0]))
    assert null["difficulty_null_mismatches"] == 1 and not bench_score.agrees(null)


def test_duckdb_full_agrees_only_where_quadrants_differ_at_a_threshold(tmp_path: Path, monkeypatch) -> None:
    """compare_full: samples exactly at carto's threshold may be placed differently (quantile_disc
    takes the lower middle value); any other difference, or a float beyond the tolerance, disagrees."""
    import polars as pl

    from carto_cli.io import artifacts

    bench_score = bench_module("bench_score", monkeypatch)

    def scores(name: str, quadrant: list, confidence: list, with_provenance: bool = False) -> Path:
        path = tmp_path / f"{name}.parquet"
        frame = pl.DataFrame({
            "sample_id": [1, 2, 3], "difficulty": [1.0, 2.0, 3.0], "n_correct": [1, 2, 0],
            "first_learned_epoch": [0, 1, None], "ever_learned": [True, True, False],
            "memorization": [0.0, 0.5, 0.0], "mean_loss": [1.0, 2.0, 3.0], "confidence": confidence,
            "variability": [0.1, 0.2, 0.3], "correctness": [0.25, 0.5, 0.0], "quadrant": quadrant})
        if with_provenance:  # carto's file records its thresholds: difficulty 2.0, memorization 0.25
            prov = artifacts.provenance("scores", inputs=[], parameters={},
                                        thresholds={"difficulty": 2.0, "memorization": 0.25})
            artifacts.write(frame, path, prov)
        else:
            frame.write_parquet(path)
        return path

    placed = ["stable-easy", "hotspot-memorized", "ambiguous-hard"]
    reference = scores("carto", placed, [0.5, 0.4, 0.3], with_provenance=True)
    at_threshold = ["stable-easy", "noisy-outlier", "ambiguous-hard"]  # sample 2 sits at difficulty 2.0
    result = bench_score.compare_full(reference, scores("at", at_threshold, [0.5, 0.4, 0.3]))
    assert result["quadrant_mismatches"] == 1 and bench_score.agrees_full(result)
    off = ["ambiguous-hard", "hotspot-memorized", "ambiguous-hard"]  # sample 1 is at neither threshold
    assert not bench_score.agrees_full(bench_score.compare_full(reference, scores("off", off, [0.5, 0.4, 0.3])))
    drift = bench_score.compare_full(reference, scores("drift", placed, [0.5, 0.4 + 1e-5, 0.3]))
    assert drift["confidence_beyond_tolerance"] == 1 and not bench_score.agrees_full(drift)


def test_bench_buckets_scores_equal_the_hash_kernel(small_logs: Path, tmp_path: Path) -> None:
    run = bench("bench_buckets.py", "--logs", small_logs, "--buckets", 4, "--work", tmp_path / "bucketed",
                "--compare-hash")
    result = last_json(run)
    assert (result["rows"], result["samples"], result["buckets"]) == (12_000, 3000, 4)
    assert result["same_scores_as_hash"] is True and result["same_scores_as_hash_per_run"] == [True]
    assert result["repeat"] == 1 and [len(runs) for runs in result["runs"].values()] == [1, 1, 1]
    header = run.stdout.splitlines()[0]  # the command and the code it measured, for a result file
    assert header.startswith(f"# python benchmarks/bench_buckets.py --logs {small_logs} --buckets 4")
    assert json.dumps(result["carto"]) in header and result["carto"]["sha256"]


def test_bench_update_equals_a_full_rescore(small_logs: Path, tmp_path: Path) -> None:
    run = bench("bench_update.py", "--logs", small_logs, "--work", tmp_path / "update")
    result = last_json(run)
    assert result["identical_scores"] is True and result["identical_scores_per_run"] == [True]
    assert result["new_parts"] == 2 and result["repeat"] == 1
    assert {step: len(runs) for step, runs in result["runs"].items()} == {"first": 1, "update": 1, "full": 1}
    assert result["update_wall_s"] == min(r["wall_s"] for r in result["runs"]["update"])  # best of the rounds
    assert result["full_peak_rss_mib"] == max(r["peak_rss_mib"] for r in result["runs"]["full"])  # largest
    assert run.stdout.startswith(f"# python benchmarks/bench_update.py --logs {small_logs}")
    assert not (tmp_path / "update").exists()


@pytest.mark.parametrize("script", ["bench_update.py", "bench_buckets.py"])
def test_bench_repeat_below_one_is_refused(script: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(BENCH / script), "--logs", str(tmp_path), "--repeat", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--repeat must be >= 1" in result.stderr


def fake_steps(walls: dict[str, list[float]], rss: dict[str, list[float]], calls: list[str], write):
    """A stand-in for the scripts' `step`: each call takes the next wall time and peak RSS of its
    step (keyed by the step's name), records the name, and writes the step's --out with `write`."""
    def step(name: str, argv: list[str], timeout: float) -> dict:
        key = name.split(",")[0]
        calls.append(key)
        if "--out" in argv:
            write(key, Path(argv[argv.index("--out") + 1]))
        return {"status": "ok", "wall_s": walls[key].pop(0), "peak_rss_mib": rss[key].pop(0), "cpu_s": 0.0}
    return step


def test_bench_update_repeat_alternates_and_reports_every_round(small_logs: Path, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    """Known times through the steps' stand-ins, which write real score files; the real `same_frames`
    compares them: the second round's full rescore differs, so that round says so and the run fails."""
    import polars as pl

    bench_update = bench_module("bench_update", monkeypatch)
    walls = {"epochs 0-2": [9.0, 8.0, 9.5], "+ epoch 3": [2.0, 2.0, 3.0], "full rescore": [1.0, 4.0, 2.0]}
    rss = {"epochs 0-2": [50.0, 60.0, 55.0], "+ epoch 3": [300.0, 200.0, 250.0], "full rescore": [100.0, 150.0, 125.0]}
    calls: list[str] = []

    def write(key: str, out: Path) -> None:
        assert key != "epochs 0-2" or not out.exists(), "a round starts without the previous round's scores"
        wrong = key == "full rescore" and calls.count(key) == 2  # one value off in the second round
        pl.DataFrame({"sample_id": range(10), "n_seen": [4] * 9 + [5 if wrong else 4]}).write_parquet(out)

    monkeypatch.setattr(bench_update, "step", fake_steps(walls, rss, calls, write))
    monkeypatch.setattr(sys, "argv", ["bench_update.py", "--logs", str(small_logs), "--work", str(tmp_path / "w"),
                                      "--repeat", "3"])
    assert bench_update.main() == 1  # the scores differed in one round
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the fold and the full rescore swap order every round
    assert calls == ["epochs 0-2", "+ epoch 3", "full rescore", "epochs 0-2", "full rescore", "+ epoch 3",
                     "epochs 0-2", "+ epoch 3", "full rescore"]
    assert (result["update_wall_s"], result["full_wall_s"], result["update_over_full_wall"]) == (2.0, 1.0, 2.0)
    assert (result["update_peak_rss_mib"], result["full_peak_rss_mib"], result["update_over_full_rss"]) == \
        (300.0, 150.0, 2.0)
    assert result["update_over_full_wall_per_run"] == [2.0, 0.5, 1.5]
    assert result["update_over_full_wall_spread"] == [0.5, 2.0]
    assert result["update_over_full_rss_per_run"] == [3.0, 1.333, 2.0]
    assert result["first_wall_s"] == 8.0 and result["first_peak_rss_mib"] == 60.0
    assert result["identical_scores_per_run"] == [True, False, True] and result["identical_scores"] is False


def test_bench_buckets_repeat_alternates_and_reports_every_round(small_logs: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    """The real thing: `--repeat 2 --compare-hash` on a real log, every step a real `carto` process and
    the scores compared by the real `same_frames`; `step` is only watched, to see the order."""
    bench_buckets = bench_module("bench_buckets", monkeypatch)
    calls: list[str] = []
    real_step = bench_buckets.step

    def watched(name: str, argv: list[str], timeout: float) -> dict:
        calls.append(name)
        return real_step(name, argv, timeout)

    monkeypatch.setattr(bench_buckets, "step", watched)
    monkeypatch.setattr(sys, "argv", ["bench_buckets.py", "--logs", str(small_logs), "--work", str(tmp_path / "w"),
                                      "--buckets", "2", "--compare-hash", "--repeat", "2"])
    assert bench_buckets.main() == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    # a fresh bucketize every round, and the two scorings swap order from one round to the next
    assert calls == ["bucketize", "score", "score-hash", "bucketize", "score-hash", "score"]
    assert "[1/2]" in out and "[2/2]" in out and result["repeat"] == 2
    assert (result["rows"], result["samples"], result["buckets"]) == (12_000, 3000, 2)
    runs = result["runs"]
    assert {key: [r["status"] for r in rs] for key, rs in runs.items()} == \
        {"bucketize": ["ok", "ok"], "score": ["ok", "ok"], "score_hash": ["ok", "ok"]}
    assert result["same_scores_as_hash_per_run"] == [True, True] and result["same_scores_as_hash"] is True
    # every round reported, and the headline is the best time and the largest peak of the rounds
    for key in ("score_over_hash_wall_per_run", "score_peak_over_log_in_memory_per_run"):
        assert len(result[key]) == 2, key
    assert result["score_wall_s"] == min(r["wall_s"] for r in runs["score"])
    assert result["score_hash_peak_rss_mib"] == max(r["peak_rss_mib"] for r in runs["score_hash"])
    per_round = [s["wall_s"] / h["wall_s"] for s, h in zip(runs["score"], runs["score_hash"])]  # times to 0.01 s
    assert result["score_over_hash_wall_per_run"] == pytest.approx(per_round, rel=0.03)


def test_bench_buckets_reports_each_round_and_a_round_whose_scores_differ(tmp_path: Path, monkeypatch,
                                                                            capsys) -> None:
    """The ratios and the spread from known times (the steps stand-ins that write real files), and the
    real `same_frames`: the second round's hash-kernel scores differ, so that round is reported as
    different and the run fails."""
    import polars as pl

    bench_buckets = bench_module("bench_buckets", monkeypatch)
    scored = {"score": 0, "score-hash": 0}

    def write(key: str, out: Path) -> None:  # 2 buckets of 100 and 300 rows; 150 samples scored
        if key == "bucketize":
            for name, rows in (("bucket-0", 100), ("bucket-1", 300)):
                (out / name).mkdir(parents=True)
                pl.DataFrame({"sample_id": range(rows)}).write_parquet(out / name / "part.parquet")
            return
        scored[key] += 1
        wrong = key == "score-hash" and scored[key] == 2  # one value off in the second round
        pl.DataFrame({"sample_id": range(150), "n_seen": [4] * 149 + [5 if wrong else 4]}).write_parquet(out)

    mib = 400 * bench_buckets.BYTES_PER_ROW / 2**20  # the log's columns in memory
    walls = {"bucketize": [5.0, 4.0], "score": [3.0, 2.0], "score-hash": [6.0, 1.0]}
    rss = {"bucketize": [10.0, 10.0], "score": [mib, 2 * mib], "score-hash": [mib, mib]}
    calls: list[str] = []
    monkeypatch.setattr(bench_buckets, "step", fake_steps(walls, rss, calls, write))
    monkeypatch.setattr(sys, "argv", ["bench_buckets.py", "--logs", str(tmp_path), "--work", str(tmp_path / "w"),
                                      "--buckets", "2", "--compare-hash", "--repeat", "2"])
    assert bench_buckets.main() == 1  # the scores differed in one round
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert calls == ["bucketize", "score", "score-hash", "bucketize", "score-hash", "score"]
    assert (result["rows"], result["samples"], result["largest_bucket_rows"]) == (400, 150, 300)
    assert (result["score_wall_s"], result["score_hash_wall_s"], result["score_over_hash_wall"]) == (2.0, 1.0, 2.0)
    assert result["score_over_hash_wall_per_run"] == [0.5, 2.0] and result["score_over_hash_wall_spread"] == [0.5, 2.0]
    assert result["score_peak_over_log_in_memory"] == 2.0  # the largest scoring peak of the rounds
    assert result["score_peak_over_log_in_memory_per_run"] == [1.0, 2.0]
    assert result["same_scores_as_hash_per_run"] == [True, False] and result["same_scores_as_hash"] is False


def test_bench_shim_values_match_the_reference() -> None:
    pytest.importorskip("torch")
    result = last_json(bench("bench_shim.py", "--rounds", 1, "--steps", 1, "--layers", 1, "--width", 32,
                             "--batch", 2, "--context", 8))
    check = result["values_check"]
    assert check.startswith("passed"), check
    for what in ("tail_loss - reference", "n_tokens mismatches 0", "forced argmax ties", "no targets"):
        assert what in check, check  # the check covers every logged column and the tie rule
    assert result["rows_logged"] > 0


def test_bench_signal_kernel_equals_the_definition(tmp_path: Path) -> None:
    result = last_json(bench("bench_signal.py", "--samples", 3000, "--logs", tmp_path / "sketch", "--repeat", 1,
                             "--check"))
    assert result["kernel_vs_definition_mismatches"] == 0
    assert result["other_columns_identical"] is True  # the signal changes the memorization column only
    on_disk = sum(p.stat().st_size for p in (tmp_path / "sketch").rglob("*.parquet")) / 2**20
    assert result["log_on_disk_mib"] == round(on_disk, 1) > 0  # the size a result file quotes
    # the DuckDB query an expert writes for the same columns computes the same signal
    duckdb = result["duckdb_agreement"]
    assert duckdb["samples"] == 3000 and duckdb["missing"] == 0 and duckdb["forget_events_mismatches"] == 0
    assert duckdb["memorization_beyond_tolerance"] == 0 and duckdb["quadrant_mismatches_off_threshold"] == 0
    assert [g["ratio"] for g in result["goals"]] == ["extractable/forgets wall_s", "extractable/forgets peak_rss_mib",
                                                     "extractable/duckdb-sketch wall_s"]
    # the log is written as the shim writes parts: float32 columns byte-stream-split, float16 lists plain
    part = pq.ParquetFile(next((tmp_path / "sketch").rglob("*.parquet"))).metadata.row_group(0)
    encodings = {part.column(i).path_in_schema: part.column(i).encodings for i in range(part.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["loss"] and "RLE_DICTIONARY" not in encodings["top_loss.list.element"]


def test_profile_signal_times_the_signal_and_the_decoding_it_cannot_avoid(tmp_path: Path) -> None:
    bench("bench_signal.py", "--write-log", tmp_path / "sketch", "--samples", 2000)
    result = last_json(bench("profile_signal.py", "--logs", tmp_path / "sketch", "--repeat", 1))
    assert set(result["best_cpu_s"]) == {"decode late", "decode early", "signal", "dense pass"}
    assert result["rows"] == 8000 and all(v >= 0 for v in result["best_cpu_s"].values())


def test_bench_logsize_measures_real_logs_and_checks_the_scores(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    shutil.copytree(BENCH.parent / "sample_logs", logs)
    for part in sorted(logs.glob("*.parquet"))[2:]:  # a smaller log: two parts
        part.unlink()
    result = last_json(bench("bench_logsize.py", logs, "--repeat", 1))["logs"][str(logs)]
    assert result["scores_identical_after_rewrite"] is True and result["parts"] == 2
    options = result["options"]
    assert options["carto"]["bytes_per_row"] < options["before"]["bytes_per_row"]  # the float32 columns' split
    assert options["as found"]["rows"] == options["carto"]["rows"] > 0
    assert 0 < sum(result["sketch_floor_xz9"].values()) < options["carto"]["bytes_per_row"]


def test_bench_map_draws_a_density_map(tmp_path: Path) -> None:
    result = last_json(bench("bench_map.py", "--samples", 30_000, "--scores", tmp_path / "scores.parquet"))
    assert result["ok"] is True and result["samples"] == 30_000


def test_bench_commits_runs_two_commits_from_their_own_worktrees(small_logs: Path) -> None:
    if not (BENCH.parent / ".git").exists():
        pytest.skip("bench_commits.py checks commits out of the git repository; this tree has none")
    result = last_json(bench("bench_commits.py", "--logs", small_logs, "--base", "HEAD", "--repeat", 1))
    assert result["commits"]["base"] == result["commits"]["head"]
    assert result["scores"]["equal"] is True and result["scores"]["only_head"] == []
    assert [len(result["runs"][side]) for side in ("base", "head")] == [1, 1]
    assert all(run["exit"] == 0 for runs in result["runs"].values() for run in runs)


def test_bench_write_files_are_read_back_by_every_reader(small_logs: Path) -> None:
    pytest.importorskip("duckdb")
    result = last_json(bench("bench_write.py", "--logs", small_logs, "--repeat", 2))
    assert result["samples"] == 3000 and result["repeat"] == 2
    assert all(len(runs) == 2 for runs in result["runs"].values())
    for name, check in result["read_back"].items():
        assert check["polars"] and check["pyarrow"] and check["duckdb"], name
    assert result["read_back"]["polars zstd-1 (carto)"]["quadrant"] == "String"
    assert result["read_back"]["polars zstd-1, quadrant as Enum"]["quadrant"].startswith("Enum")
    assert result["read_back"]["polars zstd-1, no quadrant"]["quadrant"] == "None"


def test_bench_findings_contenders_find_what_carto_finds(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    pytest.importorskip("ahocorasick")
    result = last_json(bench("bench_findings.py", "--rows", 2000, "--row-tokens", 64, "--strings", 20,
                             "--data", tmp_path / "tokens", "--repeat", 1))
    assert result["ok"] is True and result["rows"] == 2000
    assert set(result["agreement"]) == {"carto-tokens", "ahocorasick", "duckdb", "polars"}
    for name, check in result["agreement"].items():
        assert check["pairs"] > 100 and check["agrees"], (name, check)
        assert name == "duckdb" or check["count_mismatches"] == 0, name  # every contender but DuckDB counts
    assert result["agreement"]["ahocorasick"]["position_mismatches"] == 0
    assert set(result["time_ratio"]) == {"carto-tokens", "ahocorasick", "duckdb", "polars"}


def test_bench_findings_agreement_flags_a_missing_pair_a_count_and_a_position(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    bf = bench_module("bench_findings", monkeypatch)
    carto = {"pattern": np.array([0, 0, 1]), "row": np.array([4, 4, 7]), "pos": np.array([0, 3, 2])}
    contenders = {
        "carto": carto,
        "same": {k: v.copy() for k, v in carto.items()},
        "missing": {"pattern": np.array([0]), "row": np.array([4])},  # pairs only: (1, 7) missing
        "extra": {"pattern": np.array([0, 1, 2]), "row": np.array([4, 7, 9])},
        "count": {"pattern": np.array([0, 1]), "row": np.array([4, 7]), "count": np.array([1, 1])},  # (0, 4): 2
        "position": {"pattern": np.array([0, 0, 1]), "row": np.array([4, 4, 7]), "pos": np.array([0, 3, 1])},
    }
    outs = {}
    for name, result in contenders.items():
        outs[name] = tmp_path / f"{name}.npz"
        np.savez(outs[name], **result)
    checks = bf.agreement(outs)
    assert checks["same"]["agrees"] and checks["same"]["pairs"] == 2
    assert checks["missing"]["missing"] == 1 and not checks["missing"]["agrees"]
    assert checks["extra"]["extra"] == 1 and not checks["extra"]["agrees"]
    assert checks["count"]["count_mismatches"] == 1 and not checks["count"]["agrees"]
    assert checks["position"]["position_mismatches"] == 2 and not checks["position"]["agrees"]
