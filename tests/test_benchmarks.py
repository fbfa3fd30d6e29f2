"""The benchmark scripts on tiny workloads: they run, and their cross-checks agree.

Timings are not checked here (the scripts print them as ratios against a baseline of the same run;
see benchmarks/README.md). What is checked is what the scripts assert about correctness: every
contender's per-sample output against carto's (DuckDB's SQL among them), bucketed scores against
the hash kernel's, `--update` against a full rescore, the shim's logged values against a float64
reference, and the default signal's numpy kernel against its Polars definition.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert set(result["agreement"]) == {"duckdb", "duckdb-window", "duckdb-bitmask", "polars", "carto-bitmask",
                                        "carto-general"}
    assert {goal["ratio"].split(" (")[0] for goal in result["goals"]} >= {"carto/best-duckdb", "carto/scan wall_s"}


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


def test_bench_buckets_scores_equal_the_hash_kernel(small_logs: Path, tmp_path: Path) -> None:
    result = last_json(bench("bench_buckets.py", "--logs", small_logs, "--buckets", 4, "--work",
                             tmp_path / "bucketed", "--compare-hash"))
    assert (result["rows"], result["samples"], result["buckets"]) == (12_000, 3000, 4)
    assert result["same_scores_as_hash"] is True


def test_bench_update_equals_a_full_rescore(small_logs: Path, tmp_path: Path) -> None:
    result = last_json(bench("bench_update.py", "--logs", small_logs, "--work", tmp_path / "update"))
    assert result["identical_scores"] is True and result["new_parts"] == 2


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


def test_bench_map_draws_a_density_map(tmp_path: Path) -> None:
    result = last_json(bench("bench_map.py", "--samples", 30_000, "--scores", tmp_path / "scores.parquet"))
    assert result["ok"] is True and result["samples"] == 30_000
