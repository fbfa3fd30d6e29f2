"""Each arm against its own seed's baseline: the paired differences the experiment's verdicts rest on.

    from carto_cli.experiment.paired import compare, goals
    table = compare(runs, cfg.arms)   # per arm: extraction cut, exposure, perplexity change, intervals
    verdicts = goals(table)            # the issue's goals, met or not, each with its reason

Every arm of a seed trains from the baseline's initial weights, on its rows in its order where it
keeps them (`arms.pruned_run`), and is evaluated at the moving average of its weights on the same
validation rows; so an arm's change is measured against its own seed's baseline, and the interval
is a Student-t interval over seeds of those paired changes. Two more intervals say where the spread
comes from: per seed, a bootstrap over the validation rows (the measure's own noise, no training
noise), and the same paired change at the final weights instead of the average.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

CUT_GOAL, PPL_GOAL = 0.40, 0.005  # the paper's headline: >= 40% less extraction at < +0.5% perplexity
POWER_GOAL = 0.003  # the random arm's 95% interval resolves +-0.3%: its half-width at most 0.3 points
CARTO_GOALS = {"default": 0.80, "mask": 0.90}  # carto's own goal: these extraction cuts
PEERS = ("dedup-exact", "goldfish")  # carto's arms must be at least as good as these on both axes
BOOTSTRAP = 2000


def compare(runs: list[dict], arms: tuple[str, ...]) -> dict:
    """Per arm after the baseline: the extraction cut (pooled over every canary of every seed, and
    per seed), the exposure change, the perplexity change with its intervals, and what it removed."""
    rng = np.random.default_rng(0)
    out = {}
    for arm in arms[1:]:
        pairs = [(run["arms"]["baseline"], run["arms"][arm]) for run in runs]
        base_hits = sum(sum(c["extracted"] for c in b["per_canary"]) for b, _ in pairs)
        arm_hits = sum(sum(c["extracted"] for c in a["per_canary"]) for _, a in pairs)
        per_seed_cut = [1 - a["extraction_rate"] / b["extraction_rate"] for b, a in pairs if b["extraction_rate"] > 0]
        out[arm] = {
            "extracted": [arm_hits, base_hits],
            "extraction_cut": 1 - arm_hits / base_hits if base_hits else None,
            "extraction_cut_per_seed": summarise(per_seed_cut) if per_seed_cut else None,
            "exposure_change": summarise([a["exposure_skewnorm"] - b["exposure_skewnorm"] for b, a in pairs]),
            "ppl_change": summarise([a["val_ppl"] / b["val_ppl"] - 1 for b, a in pairs]),
            "ppl_change_final_weights": summarise([a["val_ppl_final"] / b["val_ppl_final"] - 1 for b, a in pairs]),
            "ppl_change_rows_ci95": [_row_bootstrap(b["val_row_nll"], a["val_row_nll"], rng) for b, a in pairs],
            "ppl_vs_random": (summarise([run["arms"][arm]["val_ppl"] / run["arms"]["random"]["val_ppl"] - 1
                                         for run in runs]) if "random" in arms else None),
            "rows_removed": float(np.mean([a["rows_removed"] for _, a in pairs])),
            "targets_removed": float(np.mean([a["targets_removed"] for _, a in pairs])),
        }
    return out


def _row_bootstrap(base: list[float], arm: list[float], rng: np.random.Generator) -> list[float]:
    """95% bootstrap interval of exp(mean arm) / exp(mean base) - 1 over the validation rows, resampled
    in pairs: how much of a seed's change is the sampling of its validation rows."""
    b, a = np.asarray(base), np.asarray(arm)
    picks = rng.integers(0, len(b), size=(BOOTSTRAP, len(b)))
    ratios = np.exp(a[picks].mean(axis=1) - b[picks].mean(axis=1)) - 1
    return [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))]


def goals(table: dict) -> dict:
    """The verdicts: per arm, the paper's headline on the interval (cut >= 40% and the perplexity
    interval's upper end < +0.5%); the power goal (random's interval no wider than +-0.3%); carto's goals
    (default >= 80%, mask >= 90% cut; a perplexity not above random's: the mean of the paired
    difference arm / random - 1 over seeds <= 0, its interval given; at least as good as each peer on
    both axes, by the means), each with the figures it was decided on."""
    headline = {}
    for arm, row in table.items():
        ci = row["ppl_change"]["ci95"]
        cut = row["extraction_cut"]
        headline[arm] = {"cut": cut, "ppl_upper": None if ci is None else ci[1],
                         "holds": cut is not None and ci is not None and cut >= CUT_GOAL and ci[1] < PPL_GOAL}
    out = {"headline": headline}
    if "random" in table and table["random"]["ppl_change"]["ci95"] is not None:
        lo, hi = table["random"]["ppl_change"]["ci95"]
        out["power"] = {"random_ci95": [lo, hi], "half_width": (hi - lo) / 2, "met": bool((hi - lo) / 2 <= POWER_GOAL)}
    random_ppl = table["random"]["ppl_change"]["mean"] if "random" in table else None
    for arm, target in CARTO_GOALS.items():
        if arm not in table:
            continue
        row = table[arm]
        verdict = {"cut_goal": target, "cut": row["extraction_cut"],
                   "cut_met": row["extraction_cut"] is not None and row["extraction_cut"] >= target,
                   "ppl_change": row["ppl_change"]["mean"], "random_ppl_change": random_ppl,
                   "ppl_vs_random": row["ppl_vs_random"],
                   "ppl_not_above_random": None if random_ppl is None else row["ppl_vs_random"]["mean"] <= 0,
                   "against_peers": {}}
        for peer in PEERS:
            if peer in table:
                other = table[peer]
                verdict["against_peers"][peer] = {
                    "cut": (row["extraction_cut"] or 0) >= (other["extraction_cut"] or 0),
                    "ppl": row["ppl_change"]["mean"] <= other["ppl_change"]["mean"]}
        out[arm] = verdict
    return out


def summarise(values: list[float]) -> dict:
    """Per-seed values, their mean, and a 95% Student-t interval over seeds (None for one seed)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"per_seed": values, "mean": mean, "ci95": None}
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return {"per_seed": values, "mean": mean, "ci95": [mean - half, mean + half]}
