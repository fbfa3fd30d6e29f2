"""The benchmark scripts on tiny workloads: they run, and their cross-checks agree.

Timings are not checked here (the scripts print them as ratios against a baseline of the same run;
see benchmarks/README.md). What is checked is what the scripts assert about correctness: every
contender's per-sample output against carto's (DuckDB's SQL among them), bucketed scores against
the hash kernel's, `--update` against a full rescore, and the shim's logged values against a
float64 reference.
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
    for name, agreement in result["agreement"].items():  # duckdb, polars, carto-bitmask, carto-general
        assert agreement["samples"] == 3000, name
        assert agreement["forget_events_mismatches"] == 0 and agreement["n_seen_mismatches"] == 0, name
        assert agreement["difficulty_beyond_tolerance"] == 0, name
    assert set(result["agreement"]) == {"duckdb", "polars", "carto-bitmask", "carto-general"}


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
    assert result["values_check"].startswith("passed"), result["values_check"]
    assert result["rows_logged"] > 0
