"""The baseline's logs, scored: every candidate ranking measured against the canaries, the
development seed's choice of carto's ranking, and each seed's arms set up from its own scores.

    from carto_cli.experiment.rankings import choose_ranking, prepare_arms

    dev = choose_ranking(cfg, dev_data, frac, work / "dev", dev_baseline_metrics)
    arms = prepare_arms(cfg, data, frac, seed, tuple(dev["chosen"]["ranking"]), work / "seed0")

The logs are scored with `pipeline.run_score`, exactly as `carto score` does; the canaries are
used only to measure a ranking afterwards (recall, AUC, ranks), never to make one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from carto_cli.engines import findings as findings_pass
from carto_cli.engines import pipeline
from carto_cli.experiment import metrics
from carto_cli.experiment.arms import SeedData, arm_runs
from carto_cli.experiment.canaries import CanarySet
from carto_cli.experiment.config import DEFAULT_RANKING, DEV_SEED, PAPER_RANKING, RANKINGS, Config, ranking_name
from carto_cli.export import manifests as export
from carto_cli.io import artifacts, logs, tokens
from carto_cli.score import rules


def choose_ranking(cfg: Config, data: SeedData, frac: float, work: Path, baseline: dict) -> dict:
    """Pick carto's memorization ranking on the development seed: the candidate that puts the most
    canary copies among the first `frac` of samples (ties go to the earlier candidate).

    Development canaries, split and initial weights are never reused by the reported seeds, so
    the reported numbers are not tuned to them.
    """
    table = compare_rankings(cfg, data, frac, work / "logs", work)
    best = max((row for row in table if tuple(row["ranking"]) != PAPER_RANKING),
               key=lambda row: row["canary_recall"])
    return {"seed": DEV_SEED, "candidates": table, "chosen": best,
            "baseline_extraction_rate": baseline["extraction_rate"]}


def compare_rankings(cfg: Config, data: SeedData, frac: float, log_dir: Path, work: Path,
                     source: str = "training") -> list[dict]:
    """Every ranking of RANKINGS on one baseline's logs: the share of canary copies among the pruned
    `frac` (recall) and the AUC of carriers against the other samples (null scores rank last).
    `source` names the logs: "training" (every training presentation) or "evaluation" (a pass
    over every row after each epoch)."""
    carriers = data.canaries.carriers
    table = []
    for ranking in RANKINGS:
        out = work / ("" if source == "training" else source) / f"scores-{_slug(ranking)}.parquet"
        scores = score(log_dir, score_params(cfg, *ranking), out)
        keep = _keep_mask(export.prune_manifest(scores, frac=frac, by="memorization"), len(data.train))
        table.append({"ranking": list(ranking), "name": ranking_name(ranking), "source": source,
                      "canary_recall": float(1 - keep[carriers].mean()),
                      "carrier_auc": _carrier_auc(scores, carriers)})
    return table


def prepare_arms(
    cfg: Config, data: SeedData, frac: float, seed: int, carto_ranking: tuple | None, work: Path
) -> dict:
    """Score one seed's baseline logs and set up the runs of its arms after the baseline, in
    `cfg.arms` order (`arms.arm_runs`): `carto score` at its defaults, and with `--data` (the seed's
    train rows) and `--reference` (its validation rows) for the findings."""
    log_dir = work / "logs"
    rankings = (compare_rankings(cfg, data, frac, log_dir, work)
                + compare_rankings(cfg, data, frac, work / "eval_logs", work, source="evaluation"))
    scored = {"paper": score(log_dir, score_params(cfg, *PAPER_RANKING), work / "scores-paper.parquet"),
              "default": score(log_dir, score_params(cfg, *DEFAULT_RANKING), work / "scores-default.parquet")}
    if "carto" in cfg.arms:
        scored["carto"] = score(log_dir, score_params(cfg, *carto_ranking), work / "scores-carto.parquet")
    scored["findings"], findings = score_findings(cfg, data, work)
    return {"runs": arm_runs(cfg, data, frac, seed, scored, findings, work), "rankings": rankings,
            "maps": {name: _map(s) for name, s in scored.items()},
            "canary_ranks": {name: _canary_ranks(s, data.canaries) for name, s in scored.items()},
            "findings": findings_summary(scored["findings"], findings, data)}


def score_findings(cfg: Config, data: SeedData, work: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`carto score LOGS --data train.parquet --reference val.parquet` on the baseline's logs: the
    rows written as a tokenized dataset (`input_ids`: the whole row; the logged targets are row[1:],
    so label shift 1). Returns the scores (with `finding`) and the findings file's frame."""
    train, val = work / "train.parquet", work / "val.parquet"
    for rows, path in ((data.train, train), (data.val, val)):
        frame = pl.DataFrame({"sample_id": np.arange(len(rows)), "input_ids": rows.astype(np.int16).tolist()})
        frame.write_parquet(path)
    request = findings_pass.FindingsRequest(data=tokens.open_tokens(train), out=work / "findings.parquet",
                                            reference=tokens.open_tokens(val), label_shift=1)
    out = work / "scores-findings.parquet"
    pipeline.run_score(logs.open_logs([work / "logs"]), score_params(cfg, *DEFAULT_RANKING), out=out,
                       inputs=[str(work / "logs")], findings=request)
    return artifacts.read(out, "scores")[0], artifacts.read(work / "findings.parquet", "findings")[0]


def findings_summary(scores: pl.DataFrame, findings: pl.DataFrame, data: SeedData) -> dict:
    """What the findings pass found, against the canaries: findings (private, public), carriers,
    and the share of canary copies among the carriers of a private finding."""
    carriers = scores.filter(pl.col("finding").is_not_null())["sample_id"].to_numpy()
    canary_rows = data.canaries.carriers
    return {"findings": findings.height, "private": int((~findings["public"]).sum()),
            "carriers": len(carriers), "canary_copies_found": float(np.isin(canary_rows, carriers).mean()),
            "carriers_that_are_canary_copies": float(np.isin(carriers, canary_rows).mean()) if len(carriers) else None}


def score_params(cfg: Config, memorization: str, correct_from: str, threshold: str | None) -> rules.ScoreParams:
    """The parameters of one ranking (a RANKINGS entry) with the experiment's window."""
    return rules.ScoreParams(early_epochs=cfg.early_epochs, correct_from=correct_from, threshold=threshold,
                             memorization=memorization)


def score(log_dir: Path, params: rules.ScoreParams, out: Path) -> pl.DataFrame:
    """`carto score LOG_DIR` with `params`: write the scores file, read it back."""
    pipeline.run_score(logs.open_logs([log_dir]), params, out=out, inputs=[str(log_dir)])
    return artifacts.read(out, "scores")[0]


def _slug(ranking: tuple) -> str:
    return "-".join(str(part) for part in ranking if part is not None)


def _keep_mask(manifest: pl.DataFrame, n: int) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[manifest["sample_id"].to_numpy()] = manifest["keep"].to_numpy()
    return keep


def _memorization_by_id(scores: pl.DataFrame) -> np.ndarray:
    """Memorization indexed by sample_id; null (never pruned by memorization) as -inf."""
    frame = scores.sort("sample_id")
    return frame["memorization"].fill_null(float("-inf")).to_numpy().astype(float)


def _carrier_auc(scores: pl.DataFrame, carriers: np.ndarray) -> float:
    """P(a canary carrier's memorization > another sample's), ties counted half."""
    m = _memorization_by_id(scores)
    is_carrier = np.zeros(len(m), dtype=bool)
    is_carrier[carriers] = True
    return metrics.membership_auc(-m[is_carrier], -m[~is_carrier])


def _canary_ranks(scores: pl.DataFrame, canaries: CanarySet) -> list[float]:
    """Per canary: the mean percentile of its copies in the memorization ranking (1 = top)."""
    m = _memorization_by_id(scores)
    percentile = stats.rankdata(m, method="average") / len(m)  # (N,) high memorization -> near 1
    return [float(percentile[list(c.sample_ids)].mean()) for c in canaries.canaries]


def _map(scores: pl.DataFrame) -> dict:
    """Difficulty and memorization per sample_id, for the data map plot."""
    frame = scores.sort("sample_id")
    return {"difficulty": frame["difficulty"].to_list(), "memorization": frame["memorization"].to_list()}
