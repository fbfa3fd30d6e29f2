"""What the `default` arm of a `carto experiment` run pruned, against the canaries: the findings
issue's done-when, measured on the run's fresh seeds.

    python scripts/prune_precision.py /work/runs/final > docs/experiment-results/short/prune-precision.md

Per seed (its directory `seedN/`): the share of the copies of the canaries the baseline extracted
that are in the default prune set (`manifest-default.parquet`), the share of the pruned rows that
carry a canary, and, for the pruned rows that carry none, the private findings they carry (every
pruned row carries one: the prune takes whole private findings only) and whether those findings'
text occurs in the seed's validation rows (a private finding's never does: that is the rule).
Reads only the files the run wrote: `canaries.json`, `runs/seed-N-baseline.json`,
`manifest-default.parquet`, `scores-findings.parquet`, `findings.parquet`, `val.parquet`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl


def seed_report(run: Path, seed: int) -> dict:
    work = run / f"seed{seed}"
    canaries = json.loads((work / "canaries.json").read_text())["canaries"]
    baseline = json.loads((run / "runs" / f"seed-{seed}-baseline.json").read_text())
    extracted = {c["key"] for c in baseline["per_canary"] if c["extracted"]}
    copies = {i for c in canaries for i in c["sample_ids"]}
    extracted_copies = {i for c in canaries if c["key"] in extracted for i in c["sample_ids"]}
    manifest = pl.read_parquet(work / "manifest-default.parquet")
    pruned = set(manifest.filter(~pl.col("keep"))["sample_id"].to_list())
    scores = pl.read_parquet(work / "scores-findings.parquet")
    findings = pl.read_parquet(work / "findings.parquet")
    others = scores.filter(pl.col("sample_id").is_in(sorted(pruned - copies)))
    other_findings = findings.filter(pl.col("finding").is_in(others["finding"].drop_nulls().unique().implode()))
    val_text = b"\x00".join(bytes(row) for row in pl.read_parquet(work / "val.parquet")["input_ids"].to_list())
    in_val = sum(bytes(tokens) in val_text for tokens in other_findings["tokens"].to_list())
    return {
        "seed": seed, "extracted": f"{len(extracted)}/{len(canaries)}",
        "extracted_copies_pruned": len(extracted_copies & pruned) / max(1, len(extracted_copies)),
        "pruned": len(pruned), "pruned_carriers": len(pruned & copies) / max(1, len(pruned)),
        "others": others.height, "others_with_private_finding": int(others["finding"].is_not_null().sum()),
        "other_findings": other_findings.height, "other_findings_in_val": in_val,
        "examples": [bytes(tokens).decode("utf-8", "replace")  # byte-level tokens: the text itself
                     for tokens in other_findings.sort("evidence", descending=True)["tokens"].head(5).to_list()],
    }


def main() -> None:
    run = Path(sys.argv[1])
    seeds = json.loads((run / "results.json").read_text())["seeds"]
    rows = [seed_report(run, seed) for seed in seeds]
    print(f"# The default arm's prune set against the canaries ({run}, seeds {seeds})\n")
    print("`python scripts/prune_precision.py RUN_DIR` on the run's own files.\n")
    print("| seed | baseline extracted | copies of extracted canaries pruned | rows pruned | pruned rows that "
          "carry a canary | other pruned rows (with a private finding) | their findings (text in validation) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['extracted']} | {r['extracted_copies_pruned']:.1%} | {r['pruned']:,} | "
              f"{r['pruned_carriers']:.1%} | {r['others']:,} ({r['others_with_private_finding']:,}) | "
              f"{r['other_findings']} ({r['other_findings_in_val']}) |")
    print("\nThe strongest findings of the other pruned rows, per seed (escaped):\n")
    for r in rows:
        print(f"- seed {r['seed']}: " + ", ".join(json.dumps(t) for t in r["examples"]))


if __name__ == "__main__":
    main()
