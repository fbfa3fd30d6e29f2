"""Incremental scoring during training: fold one new epoch into a saved state, against a full rescore.

    python benchmarks/make_bench_logs.py                      # 10M samples x 4 epochs, 8 parts
    python benchmarks/bench_update.py --logs /work/bench_data/logs-10000000x4 --repeat 3

Simulates a run that is scored after every epoch. In a work directory of hard links (or copies)
to the log's parts, each step runs the CLI in its own process (wall time and peak RSS from wait4):
1. the parts of every epoch but the last: `carto score WORK --update --out S` (no state yet:
   a full run that saves the state);
2. the last epoch's parts are added: `carto score WORK --update --out S` (folds the new parts
   only) -- the step timed against
3. the baseline, a full rescore of the same parts: `carto score WORK --out F`.
It checks that S and F hold identical scores and prints the time and memory ratios of step 2 to
step 3. The source log is not modified.

With `--repeat K` the three steps run round-robin K times, each round from an empty work
directory; the fold (2) and the full rescore (3) swap order from round to round so that the
machine's drift hits both alike. The `*_wall_s` fields are the best of the K runs and the
`*_peak_rss_mib` fields the largest, as in bench_score.py; the headline ratios compare those, and
`runs`, `*_per_run` and `*_spread` ([min, max] of the per-round ratios) show how much the K runs
differ. The first line names the command, the carto_cli that ran (git commit, "+dirty" when the
checkout is modified) and the load average, so that the output can be kept as a result file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import DATA_ROOT, carto_source, run_step

CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]
STEPS = ("first", "update", "full")
# Run in a child: exit status 0 when the two Parquet files hold equal frames.
SAME_FRAMES = ("import sys, polars as pl\n"
               "sys.exit(0 if pl.read_parquet(sys.argv[1]).equals(pl.read_parquet(sys.argv[2])) else 3)")


def epoch_of(part: Path) -> int:
    """The epoch a part holds, from its footer statistics (the benchmark logs hold one per part)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(part)
    column = meta.schema.to_arrow_schema().names.index("epoch")
    epochs = {meta.row_group(i).column(column).statistics.min for i in range(meta.num_row_groups)}
    epochs |= {meta.row_group(i).column(column).statistics.max for i in range(meta.num_row_groups)}
    if len(epochs) != 1:
        raise SystemExit(f"{part}: holds epochs {sorted(epochs)}; this benchmark needs one epoch per part")
    return epochs.pop()


def link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)


def step(name: str, argv: list[str], timeout: float) -> dict:
    return run_step(name, argv, timeout, tail=1, width=22)


def provenance(source: dict, load: float) -> str:
    """The header line: the command as run, the carto_cli it measured and the load at the start."""
    return (f"# python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}   "
            f"(carto_cli {json.dumps(source)}, load average {load:.2f} at the start)")


def spread(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(max(values), 3)]


def one_round(by_epoch: dict[int, list[Path]], work: Path, timeout: float, full_first: bool) -> tuple[dict, bool]:
    """Steps 1-3 from an empty work directory; the results per step and whether S equals F."""
    last = max(by_epoch)
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    for epoch, paths in by_epoch.items():
        if epoch != last:
            for p in paths:
                link(p, logs / p.name)
    scores, full = work / "scores.parquet", work / "full.parquet"
    update_argv = [*CARTO, "score", str(logs), "--update", "--out", str(scores)]
    results = {"first": step(f"epochs 0-{last - 1}, --update", update_argv, timeout)}
    for p in by_epoch[last]:
        link(p, logs / p.name)
    later = {"update": (f"+ epoch {last}, --update", update_argv),
             "full": ("full rescore", [*CARTO, "score", str(logs), "--out", str(full)])}
    for key in (("full", "update") if full_first else ("update", "full")):
        results[key] = step(*later[key], timeout)
    return {k: results[k] for k in STEPS}, scores.exists() and full.exists() and same_frames(scores, full)


def same_frames(a: Path, b: Path) -> bool:
    """Whether two Parquet files hold equal frames, read in a child process: this one never imports
    Polars, since a child's peak RSS starts at its parent's (see common.measure_command)."""
    return subprocess.run([sys.executable, "-c", SAME_FRAMES, str(a), str(b)]).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=DATA_ROOT / "update-work")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the three steps; best time, largest RSS")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    source, load = carto_source(), os.getloadavg()[0]
    print(provenance(source, load), flush=True)
    parts = sorted(args.logs.rglob("*.parquet"))
    by_epoch: dict[int, list[Path]] = {}
    for part in parts:
        by_epoch.setdefault(epoch_of(part), []).append(part)
    if len(by_epoch) < 2:
        ap.error(f"--logs {args.logs}: needs parts of at least two epochs, found {len(by_epoch)}")
    runs: dict[str, list[dict]] = {k: [] for k in STEPS}
    identical = []
    for k in range(args.repeat):
        if args.repeat > 1:
            print(f"[{k + 1}/{args.repeat}]", flush=True)
        results, same = one_round(by_epoch, args.work, args.timeout, full_first=k % 2 == 1)
        for key, result in results.items():
            runs[key].append(result)
        identical.append(same)
    shutil.rmtree(args.work, ignore_errors=True)
    best = {k: {"wall_s": min(r["wall_s"] for r in rs), "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)}
            for k, rs in runs.items()}
    wall_ratios = [u["wall_s"] / f["wall_s"] for u, f in zip(runs["update"], runs["full"])]
    rss_ratios = [u["peak_rss_mib"] / f["peak_rss_mib"] for u, f in zip(runs["update"], runs["full"])]
    same = all(identical)
    facts = {
        "parts": len(parts),
        "new_parts": len(by_epoch[max(by_epoch)]),
        **{f"{k}_{m}": round(v[m], 2) for k, v in best.items() for m in ("wall_s", "peak_rss_mib")},
        "update_over_full_wall": round(best["update"]["wall_s"] / best["full"]["wall_s"], 3),
        "update_over_full_rss": round(best["update"]["peak_rss_mib"] / best["full"]["peak_rss_mib"], 3),
        "identical_scores": same,
        "repeat": args.repeat,
        "update_over_full_wall_per_run": [round(r, 3) for r in wall_ratios],
        "update_over_full_wall_spread": spread(wall_ratios),
        "update_over_full_rss_per_run": [round(r, 3) for r in rss_ratios],
        "update_over_full_rss_spread": spread(rss_ratios),
        "identical_scores_per_run": identical,
        "runs": {k: [{m: round(r[m], 2) for m in ("wall_s", "peak_rss_mib")} | {"status": r["status"]} for r in rs]
                 for k, rs in runs.items()},
        "carto": source,
        "load_avg_1m_at_start": round(load, 2),
    }
    if carto_source()["sha256"] != source["sha256"]:
        facts["carto_changed_during_run"] = True
        print("WARNING: carto_cli changed during the benchmark: the runs mix code versions; rerun")
    print(f"update / full rescore: wall {facts['update_over_full_wall']:.3f}, peak RSS "
          f"{facts['update_over_full_rss']:.3f}; identical scores: {same}")
    if args.repeat > 1:
        print(f"per round: wall {', '.join(f'{r:.3f}' for r in wall_ratios)} (spread "
              f"{min(wall_ratios):.3f}-{max(wall_ratios):.3f}); peak RSS {', '.join(f'{r:.3f}' for r in rss_ratios)}")
    print(json.dumps(facts))
    return 0 if same and all(r["status"] == "ok" for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
