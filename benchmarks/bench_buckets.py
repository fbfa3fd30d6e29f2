"""Scoring past one machine's memory: bucketize a large log, score it bucket by bucket, and compare
peak memory with the log's size and the largest bucket.

    python benchmarks/make_bench_logs.py --samples 50000000          # 2e8 rows, ~1.5 GB of Parquet
    python benchmarks/bench_buckets.py --logs /work/bench_data/logs-50000000x4 --buckets 64 --repeat 3

Each step runs as the CLI in its own process (peak RSS from wait4, see `common.measure_command`):
1. `carto logs bucketize LOGS --out WORK --buckets N` (one streaming pass);
2. `carto score WORK --out scores.parquet` (one bucket at a time, spilled; the dense kernel per
   bucket);
3. with `--compare-hash`, `carto score WORK --method bitmask` (the Polars hash kernel per bucket),
   the baseline in the same run; its scores must equal step 2's.
It prints rows, samples, the largest bucket, each step's wall time and peak RSS, the ratio of the
scoring peak to the in-memory size of the log's columns (5 columns, 25 bytes per row) and, with
`--compare-hash`, the time ratio of step 2 to step 3.

With `--repeat K` the steps run round-robin K times, each round from a fresh bucketize; with
`--compare-hash` the two scoring steps swap order from round to round so that the machine's drift
hits both alike. The `*_wall_s` fields are the best of the K runs and the `*_peak_rss_mib` fields
the largest, as in bench_score.py; the headline ratios compare those, and `runs`, `*_per_run` and
`*_spread` ([min, max] of the per-round ratios) show how much the K runs differ. The first line
names the command, the carto_cli that ran (git commit, "+dirty" when the checkout is modified) and
the load average, so that the output can be kept as a result file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import DATA_ROOT, carto_source, dir_size_mib, run_step

CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]
BYTES_PER_ROW = 8 + 4 + 8 + 4 + 1  # sample_id, epoch, step, loss, correct as the shim writes them
# Run in a child: exit status 0 when the two Parquet files hold equal frames.
SAME_FRAMES = ("import sys, polars as pl\n"
               "sys.exit(0 if pl.read_parquet(sys.argv[1]).equals(pl.read_parquet(sys.argv[2])) else 3)")


def step(name: str, argv: list[str], timeout: float) -> dict:
    return run_step(name, argv, timeout, tail=3, width=10)


def provenance(source: dict, load: float) -> str:
    """The header line: the command as run, the carto_cli it measured and the load at the start."""
    return (f"# python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}   "
            f"(carto_cli {json.dumps(source)}, load average {load:.2f} at the start)")


def spread(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(max(values), 3)]


def same_frames(a: Path, b: Path) -> bool:
    """Whether two Parquet files hold equal frames, read in a child process: this one imports Polars
    only after the last round, since a child's peak RSS starts at its parent's."""
    return subprocess.run([sys.executable, "-c", SAME_FRAMES, str(a), str(b)]).returncode == 0


def one_round(args: argparse.Namespace, scores: Path, hash_scores: Path, hash_first: bool) -> tuple[dict, bool | None]:
    """Bucketize, score (and score with the hash kernel); the results per step and, with
    `--compare-hash`, whether both scorings wrote the same scores."""
    shutil.rmtree(args.work, ignore_errors=True)
    results = {"bucketize": step("bucketize", [*CARTO, "logs", "bucketize", str(args.logs), "--out", str(args.work),
                                               "--buckets", str(args.buckets)], args.timeout)}
    scorings = {"score": ("score", [*CARTO, "score", str(args.work), "--out", str(scores)])}
    if args.compare_hash:
        scorings["score_hash"] = ("score-hash", [*CARTO, "score", str(args.work), "--out", str(hash_scores),
                                                 "--method", "bitmask"])
    for key in (list(scorings)[::-1] if hash_first else list(scorings)):
        results[key] = step(*scorings[key], args.timeout)
    if not args.compare_hash:
        return {k: results[k] for k in ("bucketize", "score")}, None
    ok = results["score"]["status"] == results["score_hash"]["status"] == "ok"
    return {k: results[k] for k in ("bucketize", "score", "score_hash")}, ok and same_frames(scores, hash_scores)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--buckets", type=int, default=64)
    ap.add_argument("--work", type=Path, default=DATA_ROOT / "bucketed")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--compare-hash", action="store_true", help="also score with --method bitmask (the baseline)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the steps; best time, largest RSS")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    source, load = carto_source(), os.getloadavg()[0]
    print(provenance(source, load), flush=True)
    scores = args.work.with_name(args.work.name + "-scores.parquet")
    hash_scores = args.work.with_name(args.work.name + "-scores-hash.parquet")
    runs: dict[str, list[dict]] = {}
    same_per_run = []
    for k in range(args.repeat):
        if args.repeat > 1:
            print(f"[{k + 1}/{args.repeat}]", flush=True)
        results, same = one_round(args, scores, hash_scores, hash_first=k % 2 == 1)
        for key, result in results.items():
            runs.setdefault(key, []).append(result)
        same_per_run.append(same)
    best = {k: {"wall_s": min(r["wall_s"] for r in rs), "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)}
            for k, rs in runs.items()}
    import polars as pl  # imported only now: a child's peak RSS starts at the parent's

    rows_per_bucket = {
        b.name: pl.scan_parquet(str(b / "*.parquet")).select(pl.len()).collect().item()
        for b in sorted(args.work.iterdir())
    }
    rows = sum(rows_per_bucket.values())
    samples = pl.scan_parquet(scores).select(pl.len()).collect().item()
    largest = max(rows_per_bucket.values())
    in_memory_mib = rows * BYTES_PER_ROW / 2**20
    peak_over_log = [r["peak_rss_mib"] / in_memory_mib for r in runs["score"]]
    facts = {
        "rows": rows,
        "samples": samples,
        "buckets": args.buckets,
        "largest_bucket_rows": largest,
        "log_on_disk_mib": round(dir_size_mib(args.logs), 1),
        "log_columns_in_memory_mib": round(in_memory_mib, 1),
        "score_peak_over_log_in_memory": round(best["score"]["peak_rss_mib"] / in_memory_mib, 3),
        **{f"{k}_{m}": round(v[m], 2) for k, v in best.items() for m in ("wall_s", "peak_rss_mib")},
        "repeat": args.repeat,
        "score_peak_over_log_in_memory_per_run": [round(r, 3) for r in peak_over_log],
        "score_peak_over_log_in_memory_spread": spread(peak_over_log),
    }
    print(f"{rows:,} rows, {samples:,} samples, {args.buckets} buckets (largest {largest:,} rows); "
          f"the log's columns take {in_memory_mib:,.0f} MiB in memory, {facts['log_on_disk_mib']:,.0f} MiB on disk")
    print(f"scoring peak RSS / log columns in memory: {facts['score_peak_over_log_in_memory']:.3f}"
          + (f" (per round: {', '.join(f'{r:.3f}' for r in peak_over_log)})" if args.repeat > 1 else ""))
    if args.compare_hash and all(r["status"] == "ok" for r in runs["score_hash"]):
        same = all(same_per_run)
        time_ratios = [s["wall_s"] / h["wall_s"] for s, h in zip(runs["score"], runs["score_hash"])]
        facts["score_over_hash_wall"] = round(best["score"]["wall_s"] / best["score_hash"]["wall_s"], 3)
        facts["same_scores_as_hash"] = same
        facts["score_over_hash_wall_per_run"] = [round(r, 3) for r in time_ratios]
        facts["score_over_hash_wall_spread"] = spread(time_ratios)
        facts["same_scores_as_hash_per_run"] = same_per_run
        print(f"score / hash-kernel score, wall time: {facts['score_over_hash_wall']:.3f}; "
              f"identical scores: {same}")
        if args.repeat > 1:
            print(f"per round: {', '.join(f'{r:.3f}' for r in time_ratios)} "
                  f"(spread {min(time_ratios):.3f}-{max(time_ratios):.3f})")
    facts["runs"] = {k: [{m: round(r[m], 2) for m in ("wall_s", "peak_rss_mib")} | {"status": r["status"]}
                         for r in rs] for k, rs in runs.items()}
    facts["carto"] = source
    facts["load_avg_1m_at_start"] = round(load, 2)
    if carto_source()["sha256"] != source["sha256"]:
        facts["carto_changed_during_run"] = True
        print("WARNING: carto_cli changed during the benchmark: the runs mix code versions; rerun")
    print(json.dumps(facts))
    ok = all(r["status"] == "ok" for rs in runs.values() for r in rs)
    return 0 if ok and all(same is not False for same in same_per_run) else 1


if __name__ == "__main__":
    sys.exit(main())
