"""Where the perplexity half's spread comes from: the random arm's paired change under each way of
measuring it, on the same seeds.

    python scripts/power_study.py --paired docs/experiment-results/short/results.json \
        --out /tmp/power --first-seed 30 --seeds 3 > docs/experiment-results/short/power-study.md

`carto experiment` (the short regime) already measures two of the sources in its own runs: every
arm is evaluated at a moving average of its weights and at its final weights, and each seed's
change has a bootstrap interval over its validation rows. This script adds the third, the data
order: it runs the baseline and the random arm again on the given seeds with `order="shuffled"`
(each arm draws its own order, as earlier protocols did) and sets the random arm's per-seed
changes under the four combinations side by side: paired or shuffled order, moving-average or
final weights, with the standard deviation over seeds and the 95% interval's half-width; and the
A/A change: the baseline trained again in another order against itself, the floor of any arm's
spread (the same rows and initial weights, a different order of presentations). The
paired run's figures are read from its results.json and runs/*.json (the validation rows' losses).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from carto_cli.experiment.config import SHORT
from carto_cli.experiment.run import run_experiment


def spread(changes: list[float]) -> str:
    """Per-seed changes, their standard deviation and the 95% t-interval's half-width, in percent."""
    sd = float(np.std(changes, ddof=1))
    half = float(stats.t.ppf(0.975, len(changes) - 1) * sd / math.sqrt(len(changes)))
    per_seed = ", ".join(f"{100 * c:+.2f}%" for c in changes)
    return f"{per_seed} | {100 * np.mean(changes):+.2f}% | {100 * sd:.2f} | ±{100 * half:.2f}%"


def changes(results: dict, seeds: list[int], metric: str) -> list[float]:
    index = [results["seeds"].index(s) for s in seeds]
    base = results["arms"]["baseline"][metric]["per_seed"]
    arm = results["arms"]["random"][metric]["per_seed"]
    return [arm[i] / base[i] - 1 for i in index]


def aa(paired: dict, shuffled: dict, seeds: list[int], metric: str) -> list[float]:
    """The same rows trained twice, in two orders: the floor of any paired change's spread."""
    first = [paired["arms"]["baseline"][metric]["per_seed"][paired["seeds"].index(s)] for s in seeds]
    second = [shuffled["arms"]["baseline"][metric]["per_seed"][shuffled["seeds"].index(s)] for s in seeds]
    return [b / a - 1 for a, b in zip(first, second)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paired", type=Path, required=True, help="results.json of the paired (default) run")
    parser.add_argument("--out", type=Path, required=True, help="directory for the shuffled-order runs")
    parser.add_argument("--first-seed", type=int, required=True, help="the first seed, one of the paired run's")
    parser.add_argument("--seeds", type=int, required=True, help="how many consecutive seeds (at least 2)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    paired = json.loads(args.paired.read_text())
    if len(seeds) < 2 or not set(seeds) <= set(paired["seeds"]):
        raise SystemExit(f"power_study: seeds {seeds} must be at least 2 of {args.paired}'s ({paired['seeds']})")
    cfg = replace(SHORT, order="shuffled", arms=("baseline", "random"))
    shuffled = run_experiment(args.out, quick=False, seeds=len(seeds), first_seed=seeds[0], frac=paired["frac"],
                              jobs=args.jobs, config=cfg)
    print(f"# The random arm's paired perplexity change, seeds {seeds}: where the spread comes from\n")
    print(f"Paired run: {args.paired}; shuffled-order runs: `python scripts/power_study.py --paired {args.paired} "
          f"--out {args.out} --first-seed {args.first_seed} --seeds {args.seeds}`.\n")
    print("| order | weights evaluated | per seed | mean | SD (points) | 95% half-width |")
    print("|---|---|---|---|---|---|")
    for order, results in (("paired", paired), ("shuffled", shuffled)):
        for label, metric in (("moving average", "val_ppl"), ("final", "val_ppl_final")):
            print(f"| {order} | {label} | {spread(changes(results, seeds, metric))} |")
    print("| A/A: the baseline in its own order against the paired run's baseline (same rows, same initial weights) "
          f"| moving average | {spread(aa(paired, shuffled, seeds, 'val_ppl'))} |")
    print(f"| A/A | final | {spread(aa(paired, shuffled, seeds, 'val_ppl_final'))} |")
    rows = paired["paired"]["random"]["ppl_change_rows_ci95"]
    widths = [(hi - lo) / 2 for lo, hi in rows]
    print(f"\nThe validation rows' own noise (paired run, bootstrap over the rows, per seed): "
          f"±{100 * min(widths):.2f}% to ±{100 * max(widths):.2f}%.")


if __name__ == "__main__":
    main()
