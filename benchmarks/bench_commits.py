"""Did a change slow `carto score` down? Two commits' whole-process runs on one log, alternated.

    python benchmarks/bench_commits.py --logs /work/bench_data/logs-10000000x4 --base 060d0d7 --repeat 3
    python benchmarks/bench_commits.py --logs DIR --base A --head B -- --early-epochs 2

Each commit is checked out into a temporary `git worktree` (the current tree is never used, so
uncommitted edits cannot leak into either side; a commit with a `setup.py` gets its C extension
built there, as `pip install` would) and run as `carto score LOGS --out <tmp>
[options after --]` in a fresh process that imports carto_cli from that worktree (the editable
install's import hook is bypassed). The two commits run alternately, `--repeat` times each, the
order swapped every round, so the machine's drift hits both alike. For each run: wall time
(spawn to exit), user + system CPU and peak RSS (`os.wait4`). The table shows each side's best
and worst, and the ratios head/base of the best wall, the best CPU and the largest peak RSS;
the last line is JSON with every run and both commits. The two scores files are compared on the
columns both have (they must be equal).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import measure_command

REPO = Path(__file__).resolve().parents[1]
RUNNER = """
import sys
tree = sys.argv.pop(1)
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, tree)
import carto_cli
assert carto_cli.__file__.startswith(tree), carto_cli.__file__
from carto_cli import cli
sys.argv = ["carto", *sys.argv[1:]]
cli.main()
"""


def resolve(rev: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, required=True)
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--head", default="HEAD", help="the commit under test (default HEAD)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("options", nargs="*", help="options for carto score, after --")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    commits = {"base": resolve(args.base), "head": resolve(args.head)}
    print(f"command: python benchmarks/bench_commits.py {' '.join(sys.argv[1:])}")
    print(f"base {commits['base']}, head {commits['head']}; logs {args.logs}; load {os.getloadavg()[0]:.2f}",
          flush=True)
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="carto-ab-") as tmp:
        trees = {}
        for side, commit in commits.items():
            trees[side] = Path(tmp) / side
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(trees[side]), commit],
                           check=True)
            if (trees[side] / "setup.py").exists():  # a commit with a C extension: build it there, as pip would
                subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=trees[side],
                               check=True, capture_output=True)
        runner = Path(tmp) / "runner.py"
        runner.write_text(RUNNER)
        try:
            for k in range(args.repeat):
                for side in (("base", "head") if k % 2 == 0 else ("head", "base")):
                    out = Path(tmp) / f"{side}.parquet"
                    argv = [sys.executable, str(runner), str(trees[side]), "score", str(args.logs), "--out", str(out),
                            *args.options]
                    with open(os.devnull, "w") as sink:
                        wall, cpu, rss, code = measure_command(argv, timeout=args.timeout, stdout=sink, stderr=sink)
                    runs[side].append({"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss, "exit": code})
                    print(f"  [{k + 1}/{args.repeat}] {side} {commits[side]}: wall {wall:.2f} s, cpu {cpu:.2f} s, "
                          f"peak RSS {rss:,.0f} MiB, exit {code}", flush=True)
            equal = compare(Path(tmp) / "base.parquet", Path(tmp) / "head.parquet")
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    best = {side: {m: min(r[m] for r in rs) for m in ("wall_s", "cpu_s")} | {
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)} for side, rs in runs.items()}
    print(f"\n{'side':<6} {'commit':<9} {'best wall s':>12} {'worst wall s':>13} {'best cpu s':>11} "
          f"{'peak RSS MiB':>13}")
    for side, rs in runs.items():
        print(f"{side:<6} {commits[side]:<9} {best[side]['wall_s']:>12.2f} {max(r['wall_s'] for r in rs):>13.2f} "
              f"{best[side]['cpu_s']:>11.2f} {best[side]['peak_rss_mib']:>13,.0f}")
    ratios = {m: best["head"][m] / best["base"][m] for m in ("wall_s", "cpu_s", "peak_rss_mib")}
    print("head/base: " + ", ".join(f"{m} {v:.3f}" for m, v in ratios.items()))
    print(f"scores on the shared columns: {'equal' if equal['equal'] else 'DIFFERENT'} "
          f"(columns only in head: {', '.join(equal['only_head']) or 'none'})")
    print(json.dumps({"commits": commits, "logs": str(args.logs), "options": args.options, "runs": runs,
                      "best": best, "ratios": ratios, "scores": equal}))
    return 0 if equal["equal"] and all(r["exit"] == 0 for rs in runs.values() for r in rs) else 1


def compare(base: Path, head: Path) -> dict:
    """Whether the two scores files hold the same values on the columns both have."""
    import polars as pl  # imported late: the parent's RSS is every child's floor

    a, b = pl.read_parquet(base), pl.read_parquet(head)
    shared = [c for c in a.columns if c in b.columns]
    return {"equal": a.select(shared).equals(b.select(shared)), "shared": shared,
            "only_head": [c for c in b.columns if c not in a.columns]}


if __name__ == "__main__":
    sys.exit(main())
