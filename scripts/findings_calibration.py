"""How `carto score --data` chose its defaults: a grid of --min-evidence and --min-span on the
experiment's baseline logs of development seeds, against the planted canaries.

    python scripts/findings_calibration.py --work /tmp/calib --seeds 0 1     # ~20 min a seed to train
    python scripts/findings_calibration.py --work /tmp/calib --seeds 0 1 --evidence 5,10,15,20 --span 6,8,12

For each seed: the experiment's data-rich regime (`carto_cli.experiment.config.DATA_RICH`), its
rows and canaries (`arms.prepare_seed`), the baseline trained with the logger on
(`training.train_and_evaluate`, skipped when `WORK/seedS/logs` already holds its logs and
`metrics.json` its metrics), the rows written as Parquet `input_ids`; then, for every pair of
the grid, the findings pass (`engines.findings.run` on the default scores, the validation rows as
the reference) and, against the canaries: the carriers of extracted canaries in the prune set
(recall), the share of pruned rows that carry a canary (precision), findings and their kinds.
Seeds 0 and 1 are development seeds (the experiment reports other seeds). Prints a table, with the
command and carto's commit, for docs/scoring.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from carto_cli.engines import findings as findings_pass
from carto_cli.engines import pipeline
from carto_cli.io import artifacts, logs, tokens
from carto_cli.score import findings, rules

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "carto_cli", "scripts"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def baseline(seed: int, work: Path) -> tuple[dict, dict]:
    """The seed's baseline logs, rows and canaries in `work` (trained unless already there)."""
    import torch

    from carto_cli.experiment.arms import baseline_run, prepare_seed
    from carto_cli.experiment.config import DATA_RICH
    from carto_cli.experiment.corpus import cpython_text, to_bytes_samples
    from carto_cli.experiment.training import train_and_evaluate

    cfg = DATA_RICH
    data = prepare_seed(cfg, to_bytes_samples(cpython_text(cfg.corpus_bytes), cfg.sample_len), seed)
    work.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", data.train), ("val", data.val)):
        pq.write_table(pa.table({"input_ids": pa.array(rows.tolist(), type=pa.list_(pa.uint8()))}),
                       work / f"{name}.parquet")
    metrics_path = work / "metrics.json"
    if not (metrics_path.exists() and (work / "logs").is_dir()):
        torch.set_num_threads(1)
        started = time.time()
        metrics = train_and_evaluate(baseline_run(cfg, data, seed, work))
        metrics["wall_s"] = time.time() - started
        metrics_path.write_text(json.dumps(metrics, indent=1, default=float))
    return json.loads(metrics_path.read_text()), data.canaries.to_dict()


def evaluate(seed: int, work: Path, evidence: list[float], spans: list[int], public_rules: list[str]) -> list[dict]:
    metrics, canaries = baseline(seed, work)
    carrier_of = {s: i for i, c in enumerate(canaries["canaries"]) for s in c["sample_ids"]}
    extracted = {i for i, c in enumerate(metrics["per_canary"]) if c["extracted"]}
    targets = {s for s, i in carrier_of.items() if i in extracted}
    logset = logs.open_logs([work / "logs"])
    params = rules.ScoreParams(early_epochs=1)
    rows = []
    grid = [(e, s, r) for e in evidence for s in spans for r in public_rules]
    for min_evidence, min_span, public_rule in grid:
        out = work / "scores.parquet"
        request = findings_pass.FindingsRequest(
            data=tokens.open_tokens(work / "train.parquet", tokenizer="bytes"), out=work / "findings.parquet",
            params=findings.FindingParams(min_evidence=min_evidence, min_length=min_span, public_rule=public_rule),
            reference=tokens.open_tokens(work / "val.parquet", tokenizer="bytes"))
        started = time.time()
        run = pipeline.run_score(logset, params, out=out, inputs=[str(work / "logs")], findings=request)
        seconds = time.time() - started
        scores = artifacts.read(out, "scores")[0]
        pruned = set(scores.filter(pl.col("finding").is_not_null())["sample_id"].to_list())
        table = run.findings.findings.table
        rows.append({
            "seed": seed, "min_evidence": min_evidence, "min_span": min_span, "public_rule": public_rule,
            "extracted": f"{len(extracted)}/{len(canaries['canaries'])}",
            "sources": run.findings.findings.sources, "findings": table.height,
            "private": int((~table["public"]).sum()), "pruned": len(pruned),
            "recall": len(pruned & targets) / max(1, len(targets)),
            "carriers_pruned": len(pruned & set(carrier_of)) / len(carrier_of),
            "precision": len(pruned & set(carrier_of)) / max(1, len(pruned)), "seconds": seconds})
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the baselines and their logs live")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--evidence", default="5,10,15,20", help="--min-evidence values (nats)")
    parser.add_argument("--span", default="6,8,12", help="--min-span values (tokens)")
    parser.add_argument("--public-rule", default=findings.DEFAULT_PUBLIC_RULE,
                        help=f"public rules, of {', '.join(findings.PUBLIC_RULES)}")
    args = parser.parse_args()
    evidence = [float(x) for x in args.evidence.split(",")]
    spans = [int(x) for x in args.span.split(",")]
    rules = args.public_rule.split(",")
    rows = [row for seed in args.seeds for row in evaluate(seed, args.work / f"seed{seed}", evidence, spans, rules)]
    print(f"# command: python scripts/findings_calibration.py {' '.join(sys.argv[1:])}")
    print(f"# carto commit: {commit()}; defaults: --min-evidence {findings.DEFAULT_MIN_EVIDENCE:g} "
          f"--min-span {findings.DEFAULT_MIN_LENGTH}, public rule {findings.DEFAULT_PUBLIC_RULE}")
    print("# recall: carriers of extracted canaries in the prune set; precision: pruned rows that carry a canary")
    print("| seed | extracted | --min-evidence | --min-span | public rule | sources | findings | private | pruned "
          "| recall | all carriers pruned | precision |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['extracted']} | {r['min_evidence']:g} | {r['min_span']} | {r['public_rule']} | "
              f"{r['sources']:,} | "
              f"{r['findings']} | {r['private']} | {r['pruned']:,} | {r['recall']:.3f} | "
              f"{r['carriers_pruned']:.3f} | {r['precision']:.3f} |")


if __name__ == "__main__":
    main()
