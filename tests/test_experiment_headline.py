"""The experiment's headline arithmetic on hand-made run results where canaries are extracted.

`--quick` extracts no canary, so the quick run never reaches the extraction cut
(tests/test_experiment.py checks a few verdicts on synthetic rates). Here three seeds' results are
built by hand, shaped as `train_and_evaluate` returns them (and `save_run` passes them on; see
carto_cli/experiment/training.py and executor.py): the baseline extracts 4/4, 2/4 and 0/4 canaries, and each arm cuts
extraction and raises perplexity by chosen amounts, so every number of the headline is known.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from carto_cli.experiment.config import QUICK
from carto_cli.experiment.report import _headline, render_markdown
from carto_cli.experiment.report import results as _results

N_CANARIES = 4
REPETITIONS = (8, 8, 16, 16)
BASE_PPL = (10.0, 20.0, 8.0)  # per seed
# arm: (canaries extracted per seed, validation perplexity rise per seed)
PLAN = {
    "baseline": ((4, 2, 0), (0.0, 0.0, 0.0)),
    "paper": ((2, 1, 0), (0.001, 0.002, 0.003)),
    "default": ((1, 0, 0), (0.002, 0.002, 0.002)),
    "carto": ((0, 1, 0), (0.001, 0.001, 0.001)),
    "random": ((4, 2, 0), (0.0, 0.0, 0.0)),
    "loss": ((0, 0, 0), (0.01, 0.01, 0.01)),
    "weights": ((4, 3, 1), (-0.001, -0.001, -0.001)),  # seed 2: baseline extracted 0, so no cut there
    "oracle": ((0, 0, 0), (0.001, 0.004, 0.004)),
}
ARMS = tuple(PLAN)  # the arms these synthetic runs have (default-half is left out)
CFG = replace(QUICK, arms=ARMS)
# Student-t 97.5% quantiles with 1 and 2 degrees of freedom (2 and 3 values)
T1, T2 = 12.706204736174698, 4.302652729749464


def arm_metrics(seed: int, arm: str) -> dict:
    """One run's metrics as `train_and_evaluate` returns them (the `_evaluate` dict)."""
    extracted, rise = PLAN[arm][0][seed], PLAN[arm][1][seed]
    per_canary = [
        {
            "key": f"seed{seed}-canary{i}",
            "repetitions": REPETITIONS[i],
            "extracted": i >= N_CANARIES - extracted,  # the most repeated canaries are extracted first
            "exposure": 5.0 + i,
            "exposure_skewnorm": 10.0 * (i + 1),
            "kept_copies": 1.0 if arm in ("baseline", "random") else 0.5,
        }
        for i in range(N_CANARIES)
    ]
    return {
        "extraction_rate": extracted / N_CANARIES,
        "exposure": sum(c["exposure"] for c in per_canary) / N_CANARIES,
        "exposure_skewnorm": sum(c["exposure_skewnorm"] for c in per_canary) / N_CANARIES,
        "val_ppl": BASE_PPL[seed] * (1 + rise),
        "val_ppl_final": BASE_PPL[seed] * (1 + 2 * rise),
        "val_row_nll": [math.log(BASE_PPL[seed] * (1 + rise))] * 5,
        "rows_removed": 0 if arm in ("baseline", "weights") else 10,
        "targets_removed": 0 if arm in ("baseline", "weights") else 480,
        "mia_auc": 0.5,
        "kept_copies": sum(c["kept_copies"] for c in per_canary) / N_CANARIES,
        "steps": 90,
        "per_canary": per_canary,
    }


TRAINING, EVALUATION = "--correct-from log", "--correct-from tail --threshold p50"


def make_runs() -> list[dict]:
    """What `run_experiment` collects per reported seed."""
    rankings = [
        {"ranking": ["forgets", "log", None], "name": TRAINING, "source": "training", "canary_recall": 0.25,
         "carrier_auc": 0.6},
        {"ranking": ["forgets", "tail", "p50"], "name": EVALUATION, "source": "training",
         "canary_recall": 0.75, "carrier_auc": 0.8},
        {"ranking": ["forgets", "log", None], "name": TRAINING, "source": "evaluation", "canary_recall": 0.5,
         "carrier_auc": 0.7},
    ]
    return [
        {"seed": seed, "arms": {arm: arm_metrics(seed, arm) for arm in ARMS}, "rankings": rankings,
         "maps": {}, "canary_ranks": {"paper": [0.1, 0.2, 0.3, 0.4], "carto": [0.4, 0.3, 0.2, 0.1]},
         "carriers": []}
        for seed in range(3)
    ]


DEV = {
    "seed": 1000,
    "candidates": [{"ranking": ["forgets", "log", None], "name": TRAINING, "source": "training",
                    "canary_recall": 0.2, "carrier_auc": 0.5},
                   {"ranking": ["forgets", "tail", "p50"], "name": EVALUATION, "source": "training",
                    "canary_recall": 0.6, "carrier_auc": 0.9}],
    "baseline_extraction_rate": 0.75,
}
DEV["chosen"] = DEV["candidates"][1]


def interval(values: list[float], t: float) -> list[float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = t * sd / math.sqrt(len(values))
    return [mean - half, mean + half]


def test_headline_cut_rise_and_verdicts() -> None:
    headline = _headline(make_runs(), ARMS)
    assert list(headline) == list(ARMS[1:])
    # cut = 1 - arm / baseline extraction, over seeds 0 and 1 only (seed 2's baseline extracted none)
    cuts = {"paper": [0.5, 0.5], "default": [0.75, 1.0], "carto": [1.0, 0.5], "random": [0.0, 0.0], "loss": [1.0, 1.0],
            "weights": [0.0, -0.5], "oracle": [1.0, 1.0]}
    for arm, want in cuts.items():
        cut = headline[arm]["extraction_cut"]
        assert cut["per_seed"] == pytest.approx(want, abs=1e-12), arm
        assert cut["mean"] == pytest.approx(sum(want) / 2, abs=1e-12), arm
        assert cut["ci95"] == pytest.approx(interval(want, T1), abs=1e-9), arm
        rise = headline[arm]["ppl_rise"]  # val_ppl / baseline val_ppl - 1, over all three seeds
        assert rise["per_seed"] == pytest.approx(list(PLAN[arm][1]), abs=1e-12), arm
        assert rise["ci95"] == pytest.approx(interval(list(PLAN[arm][1]), T2), abs=1e-9), arm
    # carto: cut interval [0.75 -/+ T1 * 0.25] = [-2.43, 3.93]; oracle: rise [0.003 -/+ T2 * 0.001]
    assert headline["carto"]["extraction_cut"]["ci95"] == pytest.approx([-2.426551184, 3.926551184])
    assert headline["oracle"]["ppl_rise"]["ci95"] == pytest.approx([-0.001302653, 0.007302653])
    assert headline["paper"]["ppl_rise"]["ci95"][1] == pytest.approx(0.002 + T2 * 0.001 / math.sqrt(3))
    verdicts = {arm: (entry["holds_for_means"], entry["holds_for_intervals"]) for arm, entry in headline.items()}
    assert verdicts == {
        "paper": (True, True),  # cut 50% [50%, 50%], rise upper bound 0.45% < 0.5%
        "default": (True, False),  # mean cut 87.5%, lower bound 0.875 - T1 * 0.125 < 0
        "carto": (True, False),  # mean cut 75%, but the cut's lower bound is negative
        "random": (False, False),  # no cut
        "loss": (False, False),  # cut 100%, but perplexity +1%
        "weights": (False, False),  # more extraction
        "oracle": (True, False),  # mean rise 0.3%, upper bound 0.73%
    }


def without_baseline_extraction(runs: list[dict]) -> list[dict]:
    for run in runs:
        base = run["arms"]["baseline"]
        base["extraction_rate"] = 0.0
        for canary in base["per_canary"]:
            canary["extracted"] = False
    return runs


def test_headline_without_any_extraction_in_the_baselines() -> None:
    runs = without_baseline_extraction(make_runs())  # no cut to compute, so no verdict
    for entry in _headline(runs, ARMS).values():
        assert entry["extraction_cut"] is None
        assert entry["holds_for_means"] is False and entry["holds_for_intervals"] is False


def test_results_and_markdown_report_the_headline() -> None:
    runs = make_runs()
    results = _results(CFG, False, 0.1, DEV, runs)
    assert results["seeds"] == [0, 1, 2] and results["headline"] == _headline(runs, ARMS)
    base = results["arms"]["baseline"]
    assert base["extraction_rate"]["mean"] == pytest.approx(0.5)
    # repetitions 8: seed 0 extracted both, seeds 1 and 2 neither (2/6); 16: 2 + 2 + 0 of 6
    assert base["extraction_by_repetitions"] == pytest.approx({"8": 1 / 3, "16": 2 / 3})
    assert results["arms"]["oracle"]["val_ppl"]["per_seed"] == pytest.approx([10.01, 20.08, 8.032])
    assert results["rankings"]["training"][EVALUATION]["canary_recall"]["mean"] == 0.75
    # every canary: paper percentile rises with the baseline exposure (rho +1), carto's falls (-1)
    assert results["rank_vs_exposure"]["paper"]["spearman_rho"] == pytest.approx(1.0)
    assert results["rank_vs_exposure"]["carto"]["spearman_rho"] == pytest.approx(-1.0)
    assert results["rank_vs_exposure"]["paper"]["canaries_untouched"] == 0

    md = render_markdown(results)
    lines = md.splitlines()
    assert "**Warning:**" not in md  # the baseline extracted 50% on average: not below 50%
    assert ("`carto` arm: memorization ranked by `carto score --correct-from tail --threshold p50`, chosen on "
            "development seed 1000 (canary copies among the pruned 10%: 60%).") in lines
    assert "## The headline: extraction cut by > 40% at < 0.5% perplexity, per arm against the same seed's baseline" \
        in lines
    for row in (
        "| paper | 50% [50%, 50%] | +0.20% [-0.05%, +0.45%] | yes | yes |",
        "| default | 88% [-71%, 246%] | +0.20% [+0.20%, +0.20%] | yes | no |",
        "| carto | 75% [-243%, 393%] | +0.10% [+0.10%, +0.10%] | yes | no |",
        "| random | 0% [0%, 0%] | +0.00% [+0.00%, +0.00%] | no | no |",
        "| loss | 100% [100%, 100%] | +1.00% [+1.00%, +1.00%] | no | no |",
        "| weights | -25% [-343%, 293%] | -0.10% [-0.10%, -0.10%] | no | no |",
        "| oracle | 100% [100%, 100%] | +0.30% [-0.13%, +0.73%] | yes | no |",
    ):
        assert row in lines, row
    # the arms table: baseline extraction 100%, 50%, 0% -> 50% [-74%, 174%] (T2 * 0.5 / sqrt(3) = 1.242)
    baseline_row = next(line for line in lines if line.startswith("| baseline |"))
    assert baseline_row.startswith("| baseline | 50% [-74%, 174%] |"), baseline_row
    assert "| +0.00% |" in baseline_row
    assert f"| `{EVALUATION}` | training | 75% [75%, 75%] | 0.800 [0.800, 0.800] | 60% |" in lines
    assert f"| `{TRAINING}` | evaluation | 50% [50%, 50%] | 0.700 [0.700, 0.700] |  |" in lines
    # each arm against its own seed's baseline: canaries pooled over seeds (default: 1 of 4 + 2 + 0 = 6)
    assert results["paired"]["default"]["extracted"] == [1, 6]
    default_row = next(line for line in lines if line.startswith("| default | 1/6 |"))
    assert default_row.startswith("| default | 1/6 | 83% | +0.0 [+0.0, +0.0] | +0.20% [+0.20%, +0.20%] | ±0.00% | "
                                  "+0.40% [+0.40%, +0.40%] | 10 | 480 | holds |"), default_row


def test_markdown_says_when_no_baseline_extracted_a_canary() -> None:
    md = render_markdown(_results(CFG, True, 0.1, DEV, without_baseline_extraction(make_runs())))
    assert "**Warning:** the baseline extracted only 0% of its canaries (< 50%)" in md
    assert "| paper | n/a (baseline extracted 0) | +0.20% [-0.05%, +0.45%] | no | no |" in md.splitlines()
