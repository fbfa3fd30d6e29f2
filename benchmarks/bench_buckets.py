"""Scoring past one machine's memory: bucketize a large log, score it bucket by bucket, and compare
peak memory with the log's size and the largest bucket.

    python benchmarks/make_bench_logs.py --samples 50000000          # 2e8 rows, ~1.5 GB of Parquet
    python benchmarks/bench_buckets.py --logs /work/bench_data/logs-50000000x4 --buckets 64

Each step runs as the CLI in its own process (peak RSS from wait4, see `common.measure_command`):
1. `carto logs bucketize LOGS --out WORK --buckets N` (one streaming pass);
2. `carto score WORK --out scores.parquet` (one bucket at a time, spilled; the dense kernel per
   bucket);
3. with `--compare-hash`, `carto score WORK --method bitmask` (the Polars hash kernel per bucket),
   the baseline in the same run; its scores must equal step 2's.
It prints rows, samples, the largest bucket, each step's wall time and peak RSS, the ratio of the
scoring peak to the in-memory size of the log's columns (5 columns, 25 bytes per row) and, with
`--compare-hash`, the time ratio of step 2 to step 3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import DATA_ROOT, dir_size_mib, run_step

CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]
BYTES_PER_ROW = 8 + 4 + 8 + 4 + 1  # sample_id, epoch, step, loss, correct as the shim writes them


def step(name: str, argv: list[str], timeout: float) -> dict:
    return run_step(name, argv, timeout, tail=3, width=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--buckets", type=int, default=64)
    ap.add_argument("--work", type=Path, default=DATA_ROOT / "bucketed")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--compare-hash", action="store_true", help="also score with --method bitmask (the baseline)")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    scores = args.work.with_name(args.work.name + "-scores.parquet")
    results = {
        "bucketize": step("bucketize", [*CARTO, "logs", "bucketize", str(args.logs), "--out", str(args.work),
                                        "--buckets", str(args.buckets)], args.timeout),
        "score": step("score", [*CARTO, "score", str(args.work), "--out", str(scores)], args.timeout),
    }
    hash_scores = args.work.with_name(args.work.name + "-scores-hash.parquet")
    if args.compare_hash:
        results["score_hash"] = step("score-hash", [*CARTO, "score", str(args.work), "--out", str(hash_scores),
                                                    "--method", "bitmask"], args.timeout)
    import polars as pl  # imported only now: a child's peak RSS starts at the parent's

    rows_per_bucket = {
        b.name: pl.scan_parquet(str(b / "*.parquet")).select(pl.len()).collect().item()
        for b in sorted(args.work.iterdir())
    }
    rows = sum(rows_per_bucket.values())
    samples = pl.scan_parquet(scores).select(pl.len()).collect().item()
    largest = max(rows_per_bucket.values())
    in_memory_mib = rows * BYTES_PER_ROW / 2**20
    facts = {
        "rows": rows,
        "samples": samples,
        "buckets": args.buckets,
        "largest_bucket_rows": largest,
        "log_on_disk_mib": round(dir_size_mib(args.logs), 1),
        "log_columns_in_memory_mib": round(in_memory_mib, 1),
        "score_peak_over_log_in_memory": round(results["score"]["peak_rss_mib"] / in_memory_mib, 3),
        **{f"{k}_{m}": round(v[m], 2) for k, v in results.items() for m in ("wall_s", "peak_rss_mib")},
    }
    print(f"{rows:,} rows, {samples:,} samples, {args.buckets} buckets (largest {largest:,} rows); "
          f"the log's columns take {in_memory_mib:,.0f} MiB in memory, {facts['log_on_disk_mib']:,.0f} MiB on disk")
    print(f"scoring peak RSS / log columns in memory: {facts['score_peak_over_log_in_memory']:.3f}")
    if args.compare_hash and results["score_hash"]["status"] == "ok":
        same = pl.read_parquet(scores).equals(pl.read_parquet(hash_scores))
        facts["score_over_hash_wall"] = round(results["score"]["wall_s"] / results["score_hash"]["wall_s"], 3)
        facts["same_scores_as_hash"] = same
        print(f"score / hash-kernel score, wall time: {facts['score_over_hash_wall']:.3f}; "
              f"identical scores: {same}")
    print(json.dumps(facts))
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
