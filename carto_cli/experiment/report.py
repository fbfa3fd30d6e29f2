"""The experiment's results: per-arm summaries with Student-t intervals over seeds, the paper's
headline verdict per arm, the rankings compared, and the results.md and results.png files."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy import stats

from carto_cli.experiment import paired
from carto_cli.experiment.config import METRICS, Config
from carto_cli.experiment.paired import summarise
from carto_cli.version import __version__

# ------------------------------------------------------------------------------------ results


def results(cfg: Config, quick: bool, frac: float, dev: dict | None, runs: list[dict]) -> dict:
    """Everything results.json holds. `dev`: the development seed's choice of the `carto` arm's
    ranking (None when the regime has no `carto` arm)."""
    arms = {}
    for arm in cfg.arms:
        seeds = [run["arms"][arm] for run in runs]
        summary = {m: summarise([s[m] for s in seeds]) for m in METRICS if all(m in s for s in seeds)}
        summary["steps"] = [s["steps"] for s in seeds]
        summary["extraction_by_repetitions"] = _by_repetitions(seeds)
        arms[arm] = summary
    return {
        "carto_version": __version__,
        "quick": quick,
        "frac": frac,
        "seeds": [run["seed"] for run in runs],
        "config": asdict(cfg),
        "carto_ranking": dev,
        "arms": arms,
        "headline": _headline(runs, cfg.arms),
        "paired": (table := paired.compare(runs, cfg.arms)),
        "goals": paired.goals(table),
        "findings": [run.get("findings") for run in runs],
        "cost": {arm: {"wall_s": summarise([run["arms"][arm].get("wall_s", float("nan")) for run in runs]),
                       "peak_rss_mib": max(run["arms"][arm].get("peak_rss_mib", 0.0) for run in runs)}
                 for arm in cfg.arms},
        "rankings": _rankings(runs),
        "rank_vs_exposure": {name: _rank_vs_exposure(runs, name) for name in runs[0]["canary_ranks"]
                             if name in cfg.arms},
        "per_canary": {arm: [run["arms"][arm]["per_canary"] for run in runs] for arm in cfg.arms},
    }


# The paper's headline: pruning cuts canary extraction by more than 40% at under 0.5% perplexity.
HEADLINE_REDUCTION = 0.40
HEADLINE_PPL = 0.005


def _headline(runs: list[dict], arms: tuple[str, ...]) -> dict:
    """Per pruning arm and seed: relative cut in extraction and rise in validation perplexity
    against the same seed's baseline; whether the headline holds for the means and for the
    whole 95% intervals (cut's lower bound > 40%, rise's upper bound < 0.5%)."""
    out = {}
    for arm in arms[1:]:
        cut, rise = [], []
        for run in runs:
            base, this = run["arms"]["baseline"], run["arms"][arm]
            if base["extraction_rate"] > 0:
                cut.append(1 - this["extraction_rate"] / base["extraction_rate"])
            rise.append(this["val_ppl"] / base["val_ppl"] - 1)
        entry = {"extraction_cut": summarise(cut) if cut else None, "ppl_rise": summarise(rise)}
        entry["holds_for_means"] = bool(cut) and bool(
            entry["extraction_cut"]["mean"] > HEADLINE_REDUCTION and entry["ppl_rise"]["mean"] < HEADLINE_PPL)
        intervals = bool(cut) and entry["extraction_cut"]["ci95"] is not None
        entry["holds_for_intervals"] = intervals and bool(
            entry["extraction_cut"]["ci95"][0] > HEADLINE_REDUCTION and entry["ppl_rise"]["ci95"][1] < HEADLINE_PPL)
        out[arm] = entry
    return out


def _rankings(runs: list[dict]) -> dict:
    """Every ranking's canary recall and carrier AUC on each reported seed's baseline logs, by
    source: {"training": {name: ...}, "evaluation": {name: ...}}."""
    out: dict[str, dict] = {}
    for row in runs[0]["rankings"]:
        source, name = row["source"], row["name"]
        out.setdefault(source, {})[name] = {
            metric: summarise([next(r[metric] for r in run["rankings"] if (r["source"], r["name"]) == (source, name))
                               for run in runs])
            for metric in ("canary_recall", "carrier_auc")
        }
    return out


def _rank_vs_exposure(runs: list[dict], arm: str) -> dict:
    """How a canary's place in `arm`'s memorization ranking relates to its baseline exposure, over
    every seed's canaries: Spearman's rho between the mean percentile of its copies (1 = top) and
    the baseline's skew-normal exposure, and how many canaries kept all their copies in the arm."""
    percentile, exposure, untouched = [], [], 0
    for run in runs:
        percentile += run["canary_ranks"][arm]
        exposure += [c["exposure_skewnorm"] for c in run["arms"]["baseline"]["per_canary"]]
        untouched += sum(c["kept_copies"] == 1.0 for c in run["arms"][arm]["per_canary"])
    rho, p = stats.spearmanr(percentile, exposure) if len(set(percentile)) > 1 else (float("nan"), float("nan"))
    return {"spearman_rho": _finite_or_none(rho), "p_value": _finite_or_none(p), "canaries": len(percentile),
            "canaries_untouched": int(untouched), "mean_percentile": float(np.mean(percentile))}


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _by_repetitions(seeds: list[dict]) -> dict[str, float]:
    """Extraction rate per repetition count, over every seed's canaries."""
    hits: dict[int, list[bool]] = {}
    for s in seeds:
        for c in s["per_canary"]:
            hits.setdefault(c["repetitions"], []).append(c["extracted"])
    return {str(r): float(np.mean(h)) for r, h in sorted(hits.items())}


def render_markdown(results: dict) -> str:
    """The results table (mean and 95% interval over seeds per cell) with the facts behind it."""
    base = results["arms"]["baseline"]
    dev = results["carto_ranking"]
    lines = [
        (f"# carto experiment: each arm against its own seed's baseline ({results['frac']:.0%} pruning budget), "
         "then look for the canaries"),
        "",
        (f"carto {results['carto_version']}; seeds {results['seeds']}; "
        f"{'quick' if results['quick'] else 'default'} configuration: {results['config']}"),
        "",
    ]
    if base["extraction_rate"]["mean"] < 0.5:
        lines += [
            (f"**Warning:** the baseline extracted only {base['extraction_rate']['mean']:.0%} of its "
            "canaries (< 50%): too little memorization for pruning to reduce; read exposure instead."),
            "",
        ]
    if dev is not None:
        chosen = dev["chosen"]
        lines += [
            (f"`carto` arm: memorization ranked by `carto score {chosen['name']}`, chosen on development "
             f"seed {dev['seed']} (canary copies among the pruned {results['frac']:.0%}: "
             f"{chosen['canary_recall']:.0%})."),
            "",
        ]
    if "paired" in results:
        lines += _paired_lines(results)
    lines += [
        "## Every arm, every metric",
        "",
        *_table(results["arms"]),
        "",
        ("Cells: mean over seeds [95% Student-t interval]. Exposure by rank is at most log2 of the "
         f"{results['config']['n_references']} references; the skew-normal exposure extrapolates "
         "beyond them. Kept copies: share of each canary's copies left in the training data "
         "(weights arm: their mean weight)."),
        "",
        (f"## The headline: extraction cut by > {HEADLINE_REDUCTION:.0%} at < {HEADLINE_PPL:.1%} "
         "perplexity, per arm against the same seed's baseline"),
        "",
        "| arm | extraction cut | perplexity rise | holds for the means | holds for the 95% intervals |",
        "|---|---|---|---|---|",
    ]
    for name, entry in results["headline"].items():
        cut = _cell(entry["extraction_cut"], "{:.0%}") if entry["extraction_cut"] else "n/a (baseline extracted 0)"
        holds = ["yes" if entry[key] else "no" for key in ("holds_for_means", "holds_for_intervals")]
        lines.append(f"| {name} | {cut} | {_cell(entry['ppl_rise'], '{:+.2%}')} | {holds[0]} | {holds[1]} |")
    lines += [
        "",
        "## Which ranking finds the canaries (baseline logs of the reported seeds)",
        "",
        ("Training: every presentation as trained on (what the shim logs). Evaluation: a forward pass "
         "over every row after each epoch, no update (the forgetting literature's periodic evaluation)."
         + (" The development-seed column (training logs) is what chose the `carto` arm." if dev else "")),
        "",
        f"| ranking (`carto score` options) | logs | canary copies among the top {results['frac']:.0%} | "
        "carrier AUC |" + (" development seed |" if dev else ""),
        "|---|---|---|---|" + ("---|" if dev else ""),
    ]
    dev_recall = {row["name"]: row["canary_recall"] for row in dev["candidates"]} if dev else {}
    for source, rankings in results["rankings"].items():
        for name, entry in rankings.items():
            dev_cell = (f" {dev_recall[name]:.0%} |" if source == "training" else "  |") if dev else ""
            lines.append(f"| `{name}` | {source} | {_cell(entry['canary_recall'], '{:.0%}')} | "
                         f"{_cell(entry['carrier_auc'], '{:.3f}')} |{dev_cell}")
    lines += ["", "## Memorization rank against exposure", ""]
    for name, entry in results["rank_vs_exposure"].items():
        rho = ("undefined" if entry["spearman_rho"] is None
               else f"{entry['spearman_rho']:+.2f} (p = {entry['p_value']:.2g})")
        lines.append(f"- `{name}` ranking: Spearman's rho between a canary's mean percentile in the ranking and its "
                     f"baseline skew-normal exposure {rho} over {entry['canaries']} canaries; mean percentile "
                     f"{entry['mean_percentile']:.2f}; {entry['canaries_untouched']} canaries kept every copy.")
    if "cost" in results:
        lines += _cost_lines(results)
    return "\n".join(lines) + "\n"


def _paired_lines(results: dict) -> list[str]:
    """The comparison against each seed's baseline, the goals and what the runs cost."""
    table, verdicts = results["paired"], results["goals"]
    lines = [
        "## Each arm against its own seed's baseline",
        "",
        ("Extraction: canaries whose secret greedy decoding reproduces, summed over every seed (cut = 1 - "
         "arm / baseline). Perplexity: the paired change against the same seed's baseline, both evaluated at "
         "the moving average of their weights; mean [95% t-interval over seeds]. Rows: the widest 95% "
         "bootstrap interval of one seed's change over its validation rows (the measure's own noise). Final "
         "weights: the same paired change at the last iterate. Removed: train rows, and target tokens removed "
         "from training (with their rows, cut out, or dropped from the loss), mean per seed."),
        "",
        "| arm | extracted | cut | exposure change (bits) | perplexity change | rows | final weights | "
        "rows removed | targets removed | headline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in table.items():
        hits, base = row["extracted"]
        cut = "n/a" if row["extraction_cut"] is None else f"{row['extraction_cut']:.0%}"
        widest = max((hi - lo for lo, hi in row["ppl_change_rows_ci95"]), default=0.0) / 2
        lines.append(
            f"| {arm} | {hits}/{base} | {cut} | {_cell(row['exposure_change'], '{:+.1f}')} | "
            f"{_cell(row['ppl_change'], '{:+.2%}')} | ±{widest:.2%} | "
            f"{_cell(row['ppl_change_final_weights'], '{:+.2%}')} | "
            f"{row['rows_removed']:,.0f} | {row['targets_removed']:,.0f} | "
            f"{'holds' if verdicts['headline'][arm]['holds'] else 'no'} |")
    lines += ["", (f"Headline: the cut >= {paired.CUT_GOAL:.0%} and the perplexity interval's upper end < "
                   f"+{paired.PPL_GOAL:.1%}."), ""]
    if "power" in verdicts:
        lo, hi = verdicts["power"]["random_ci95"]
        half = verdicts["power"]["half_width"]
        lines += [f"Power: the random arm's interval is [{lo:+.2%}, {hi:+.2%}], ±{half:.2%}: "
                  f"{'no wider' if verdicts['power']['met'] else 'wider'} than ±{paired.POWER_GOAL:.1%}.", ""]
    for arm in paired.CARTO_GOALS:
        if arm not in verdicts:
            continue
        v = verdicts[arm]
        cut = "n/a" if v["cut"] is None else f"{v['cut']:.0%}"
        vs_random = v["ppl_vs_random"]
        peers = "; ".join(f"against {peer}: extraction {'as good or better' if w['cut'] else 'worse'}, perplexity "
                          f"{'as good or better' if w['ppl'] else 'worse'}" for peer, w in v["against_peers"].items())
        lines.append(
            f"- `{arm}`: cut {cut} (goal >= {v['cut_goal']:.0%}: {'met' if v['cut_met'] else 'not met'}); "
            + ("" if vs_random is None else f"perplexity against random's {_cell(vs_random, '{:+.2%}')} "
               f"({'not above' if v['ppl_not_above_random'] else 'above'}); ")
            + peers + ".")
    lines += ["", "## What the findings pass found on each baseline", "",
              "| seed | findings (private) | carriers | canary copies among the carriers | "
              "carriers that are canary copies |",
              "|---|---|---|---|---|"]
    for seed, found in zip(results["seeds"], results["findings"]):
        if found is None:
            continue
        share = found["carriers_that_are_canary_copies"]
        lines.append(f"| {seed} | {found['findings']} ({found['private']}) | {found['carriers']:,} | "
                     f"{found['canary_copies_found']:.1%} | {'n/a' if share is None else f'{share:.1%}'} |")
    return [*lines, ""]


def _cost_lines(results: dict) -> list[str]:
    lines = ["", "## What the runs cost", "", "| arm | wall time per run (s) | peak RSS of its process (MiB) |",
             "|---|---|---|"]
    for arm, cost in results["cost"].items():
        lines.append(f"| {arm} | {_cell(cost['wall_s'], '{:.0f}')} | {cost['peak_rss_mib']:,.0f} |")
    return lines


def _table(arms: dict) -> list[str]:
    header = ["arm", "extraction rate", "exposure (bits)", "skew-normal exposure", "val ppl",
              "val ppl vs baseline", "MIA AUC", "kept copies"]
    base_ppl = arms["baseline"]["val_ppl"]["mean"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, arm in arms.items():
        cells = [
            name,
            _cell(arm["extraction_rate"], "{:.0%}"),
            _cell(arm["exposure"], "{:.2f}"),
            _cell(arm["exposure_skewnorm"], "{:.1f}"),
            _cell(arm["val_ppl"], "{:.3f}"),
            f"{100 * (arm['val_ppl']['mean'] / base_ppl - 1):+.2f}%",
            _cell(arm["mia_auc"], "{:.3f}"),
            _cell(arm["kept_copies"], "{:.0%}"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _cell(summary: dict, fmt: str) -> str:
    text = fmt.format(summary["mean"])
    if summary["ci95"] is not None:
        lo, hi = summary["ci95"]
        text += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return text


def plot(results: dict, first_run: dict, path: Path) -> None:
    """Extraction vs repetition count per arm; the first seed's baseline data maps, canaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with_pareto = "paired" in results
    fig, axes = plt.subplots(1, 3 + with_pareto, figsize=(16 + 5.5 * with_pareto, 4.8))
    if with_pareto:
        _pareto(axes[0], results)
        axes = axes[1:]
    for name, arm in results["arms"].items():
        reps = arm["extraction_by_repetitions"]
        axes[0].plot([int(r) for r in reps], list(reps.values()), marker="o", label=name)
    repetitions = results["config"]["repetitions"]
    axes[0].set(xscale="log", xlabel="repetitions of the canary", ylabel="extraction rate",
                title="canary extraction per arm (mean over seeds)", ylim=(-0.05, 1.05))
    axes[0].set_xticks(repetitions, [str(r) for r in repetitions])
    axes[0].minorticks_off()
    axes[0].legend(fontsize=8)
    mapped = first_run["maps"]
    carriers = np.zeros(len(mapped["paper"]["difficulty"]), dtype=bool)
    carriers[first_run["carriers"]] = True
    for ax, name in zip(axes[1:], ("paper", "carto" if "carto" in mapped else "default")):
        d = np.array(mapped[name]["difficulty"], dtype=float)
        m = np.array(mapped[name]["memorization"], dtype=float)
        ax.scatter(d[~carriers], m[~carriers], s=4, alpha=0.3, label="samples")
        ax.scatter(d[carriers], m[carriers], s=10, color="red", label="canary carriers")
        ax.set(xlabel="difficulty (mean early loss)", ylabel="memorization",
               title=f"baseline data map, {name} rule (seed {first_run['seed']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pareto(ax, results: dict) -> None:
    """Extraction rate against the paired perplexity change, one small point per arm and seed, a
    large one per arm (its means): down and to the left is better."""
    colours = {}
    for index, (arm, row) in enumerate(results["paired"].items()):
        colour = colours.setdefault(arm, f"C{index % 10}")
        rates = results["arms"][arm]["extraction_rate"]["per_seed"]
        changes = [100 * c for c in row["ppl_change"]["per_seed"]]
        ax.scatter(changes, rates, s=14, alpha=0.45, color=colour)
        ax.scatter([np.mean(changes)], [np.mean(rates)], s=70, color=colour, edgecolor="black", label=arm,
                   marker="s" if arm in ("default", "mask") else "o")
    base = results["arms"]["baseline"]["extraction_rate"]["mean"]
    ax.axhline(base, color="grey", linestyle=":", linewidth=1, label="baseline extraction")
    ax.axvline(100 * HEADLINE_PPL, color="grey", linestyle="--", linewidth=1, label="+0.5% perplexity")
    ax.set(xlabel="validation perplexity change vs the seed's baseline (%)", ylabel="extraction rate",
           title="every arm and seed (large: means)", ylim=(-0.05, 1.05))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
