"""Incremental scoring during training: fold one new epoch into a saved state, against a full rescore.

    python benchmarks/make_bench_logs.py                      # 10M samples x 4 epochs, 8 parts
    python benchmarks/bench_update.py --logs /work/bench_data/logs-10000000x4

Simulates a run that is scored after every epoch. In a work directory of hard links (or copies)
to the log's parts, each step runs the CLI in its own process (wall time and peak RSS from wait4):
1. the parts of every epoch but the last: `carto score WORK --update --out S` (no state yet:
   a full run that saves the state);
2. the last epoch's parts are added: `carto score WORK --update --out S` (folds the new parts
   only) -- the step timed against
3. the baseline, a full rescore of the same parts: `carto score WORK --out F`.
It checks that S and F hold identical scores and prints the time and memory ratios of step 2 to
step 3. The source log is not modified.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from common import DATA_ROOT, run_step

CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=DATA_ROOT / "update-work")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    parts = sorted(args.logs.rglob("*.parquet"))
    by_epoch: dict[int, list[Path]] = {}
    for part in parts:
        by_epoch.setdefault(epoch_of(part), []).append(part)
    last = max(by_epoch)
    shutil.rmtree(args.work, ignore_errors=True)
    logs = args.work / "logs"
    logs.mkdir(parents=True)
    for epoch, paths in by_epoch.items():
        if epoch != last:
            for p in paths:
                link(p, logs / p.name)
    scores, full = args.work / "scores.parquet", args.work / "full.parquet"
    results = {"first": step(f"epochs 0-{last - 1}, --update", [*CARTO, "score", str(logs), "--update",
                                                                "--out", str(scores)], args.timeout)}
    for p in by_epoch[last]:
        link(p, logs / p.name)
    results["update"] = step(f"+ epoch {last}, --update", [*CARTO, "score", str(logs), "--update",
                                                           "--out", str(scores)], args.timeout)
    results["full"] = step("full rescore", [*CARTO, "score", str(logs), "--out", str(full)], args.timeout)
    import polars as pl  # imported only now: a child's peak RSS starts at the parent's

    same = pl.read_parquet(scores).equals(pl.read_parquet(full))
    facts = {
        "parts": len(parts),
        "new_parts": len(by_epoch[last]),
        **{f"{k}_{m}": round(v[m], 2) for k, v in results.items() for m in ("wall_s", "peak_rss_mib")},
        "update_over_full_wall": round(results["update"]["wall_s"] / results["full"]["wall_s"], 3),
        "update_over_full_rss": round(results["update"]["peak_rss_mib"] / results["full"]["peak_rss_mib"], 3),
        "identical_scores": same,
    }
    print(f"update / full rescore: wall {facts['update_over_full_wall']:.3f}, peak RSS "
          f"{facts['update_over_full_rss']:.3f}; identical scores: {same}")
    print(json.dumps(facts))
    shutil.rmtree(args.work, ignore_errors=True)
    return 0 if same and all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
