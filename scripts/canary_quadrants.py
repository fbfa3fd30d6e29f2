"""Where the canary carriers sit on the data map as training goes on (docs/experiment.md).

    python scripts/canary_quadrants.py EXPERIMENT_DIR [--seeds 1 2 3]

For each reported seed of a `carto experiment` output directory, the baseline's training-time logs
are cut after each epoch e (every presentation with epoch <= e) and scored by `carto score` with
the paper's definition (correct = token accuracy >= 0.5, forget events / transitions); the table
gives, per cut, the share of canary-carrying samples and of all samples in each quadrant, plus the
carriers' mean forget events and how many were ever learned. Only the logs and the canary record
(`canaries.json`) are read; nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from carto_cli.engines import pipeline
from carto_cli.io import logs
from carto_cli.score import quadrants, rules

QUADRANTS = [*quadrants.QUADRANTS, "unplaced"]


def movement(seed_dir: Path, early_epochs: int) -> list[dict]:
    rows = pl.read_parquet(seed_dir / "logs")
    carriers = {i for c in json.loads((seed_dir / "canaries.json").read_text())["canaries"] for i in c["sample_ids"]}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(int(rows["epoch"].max()) + 1):
            cut = Path(tmp) / f"cut{epoch}"
            cut.mkdir()
            rows.filter(pl.col("epoch") <= epoch).write_parquet(cut / "part-cut.parquet")
            out_path = Path(tmp) / f"scores{epoch}.parquet"
            pipeline.run_score(logs.open_logs([cut]), rules.ScoreParams(early_epochs=early_epochs),
                               out=out_path, inputs=[str(cut)])
            scores = pl.read_parquet(out_path).with_columns(
                pl.col("sample_id").is_in(list(carriers)).alias("carrier"), pl.col("quadrant").fill_null("unplaced")
            )
            row = {"epoch": epoch}
            for who, frame in (("carriers", scores.filter("carrier")), ("all", scores)):
                counts = dict(frame.group_by("quadrant").len().iter_rows())
                row[who] = {q: counts.get(q, 0) / frame.height for q in QUADRANTS}
            carrier_scores = scores.filter("carrier")
            row["carrier_mean_forgets"] = float(carrier_scores["forget_events"].mean())
            row["carrier_ever_learned"] = float(carrier_scores["ever_learned"].mean())
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    args = parser.parse_args()
    results = json.loads((args.experiment_dir / "results.json").read_text())
    seeds = args.seeds or results["seeds"]
    early = results["config"]["early_epochs"]
    per_seed = {s: movement(args.experiment_dir / f"seed{s}", early) for s in seeds}
    print("| after epoch | " + " | ".join(f"carriers {q}" for q in QUADRANTS)
          + " | all: hotspot + outlier | carriers ever learned | carriers' mean forgets |")
    print("|" + "---|" * (len(QUADRANTS) + 4))
    for e in range(len(per_seed[seeds[0]])):
        rows = [per_seed[s][e] for s in seeds]

        def mean(f, rows=rows):
            return float(np.mean([f(r) for r in rows]))

        cells = [f"{mean(lambda r, q=q: r['carriers'][q]):.0%}" for q in QUADRANTS]
        high_m = mean(lambda r: r["all"]["hotspot-memorized"] + r["all"]["noisy-outlier"])
        print(f"| {e} | " + " | ".join(cells) + f" | {high_m:.0%} | {mean(lambda r: r['carrier_ever_learned']):.0%} | "
              f"{mean(lambda r: r['carrier_mean_forgets']):.2f} |")
    print(f"\nmeans over seeds {seeds}; quadrants by the paper's definition (carto score defaults)")


if __name__ == "__main__":
    main()
