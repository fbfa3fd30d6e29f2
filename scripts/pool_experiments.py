"""Pool the seeds of several `carto experiment` runs of one regime into one table.

    python scripts/pool_experiments.py docs/experiment-results/data-rich/results.json \
        docs/experiment-results/data-rich-seeds-7-9/results.json > pooled.md

Each run reports its seeds' per-seed values (`results.json`); runs on disjoint seeds of the same
configuration are seeds of one experiment, so their per-seed values are concatenated and
summarised again exactly as `carto experiment` summarises its own (`report.summarise`: the mean
and a 95% Student-t interval over seeds). The runs must share the configuration (refused
otherwise) and their seeds must not overlap. Only the arms and rankings every run has are pooled.
"""

from __future__ import annotations

import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from carto_cli.experiment.config import Config
from carto_cli.experiment.report import HEADLINE_PPL, HEADLINE_REDUCTION, summarise

METRICS = ("extraction_rate", "exposure_skewnorm", "val_ppl", "mia_auc", "kept_copies")


def pool(paths: list[Path]) -> dict:
    runs = [json.loads(p.read_text()) for p in paths]
    # a field a run predates (e.g. `device`) counts as its default; `arms` may differ (only shared arms pool)
    defaults = {f.name: f.default for f in fields(Config) if f.default is not MISSING}
    configs = {json.dumps({k: v for k, v in {**defaults, **r["config"]}.items() if k != "arms"}, sort_keys=True)
               for r in runs}
    if len(configs) > 1:
        sys.exit("pool_experiments: the runs' configurations differ; pool only runs of one configuration")
    seeds = [s for r in runs for s in r["seeds"]]
    if len(set(seeds)) < len(seeds):
        sys.exit(f"pool_experiments: seeds overlap ({seeds}); pool only runs on disjoint seeds")
    arms = [a for a in runs[0]["arms"] if all(a in r["arms"] for r in runs)]

    def pooled(get) -> dict:
        return summarise([v for r in runs for v in get(r)["per_seed"]])

    out = {"seeds": seeds, "runs": [str(p) for p in paths], "arms": {}, "headline": {}, "rankings": {}}
    for arm in arms:
        out["arms"][arm] = {m: pooled(lambda r, a=arm, m=m: r["arms"][a][m]) for m in METRICS}
    for arm in arms[1:]:
        cuts = [r["headline"][arm]["extraction_cut"] for r in runs]
        cut = [v for c in cuts if c for v in c["per_seed"]]  # seeds whose baseline extracted nothing have none
        entry = {"extraction_cut": summarise(cut) if cut else None,
                 "ppl_rise": pooled(lambda r, a=arm: r["headline"][a]["ppl_rise"])}
        entry["holds_for_means"] = bool(cut) and entry["extraction_cut"]["mean"] > HEADLINE_REDUCTION \
            and entry["ppl_rise"]["mean"] < HEADLINE_PPL
        out["headline"][arm] = entry
    for source, names in runs[0]["rankings"].items():
        for name in names:
            if all(name in r["rankings"].get(source, {}) for r in runs):
                out["rankings"].setdefault(source, {})[name] = {
                    m: pooled(lambda r, s=source, n=name, m=m: r["rankings"][s][n][m])
                    for m in ("canary_recall", "carrier_auc")}
    return out


def _cell(summary: dict | None, percent: bool = False, digits: int = 3) -> str:
    if summary is None:
        return "—"
    fmt = (lambda x: f"{100 * x:+.2f}%") if percent else (lambda x: f"{x:.{digits}f}")
    ci = summary["ci95"]
    return fmt(summary["mean"]) + ("" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]")


def render(result: dict) -> str:
    lines = [f"Pooled seeds {result['seeds']} from {', '.join(result['runs'])}; mean [95% Student-t "
             "interval over seeds]; cut and rise against each seed's own baseline.", "",
             "| arm | extraction | extraction cut | val ppl | ppl rise | skew-normal exposure | kept copies |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for arm, metrics in result["arms"].items():
        head = result["headline"].get(arm)
        lines.append(
            f"| {arm} | {_cell(metrics['extraction_rate'], digits=2)} | "
            f"{_cell(head['extraction_cut'], percent=True) if head else '—'} | {_cell(metrics['val_ppl'])} | "
            f"{_cell(head['ppl_rise'], percent=True) if head else '—'} | "
            f"{_cell(metrics['exposure_skewnorm'], digits=1)} | "
            f"{_cell(metrics['kept_copies'], digits=2)} |")
    lines += ["", "| ranking (training logs) | carrier AUC | canary copies in the top fraction |", "|---|---:|---:|"]
    for name, entry in result["rankings"].get("training", {}).items():
        lines.append(f"| {name} | {_cell(entry['carrier_auc'])} | {_cell(entry['canary_recall'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.splitlines()[2])
    print(render(pool([Path(p) for p in sys.argv[1:]])), end="")
