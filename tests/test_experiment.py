"""`carto experiment --quick` end to end: every arm trains, every metric is reported, files written."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch
import typer
from typer.testing import CliRunner

from carto_cli.cli.experiment import experiment_command
from carto_cli.errors import OptionError
from carto_cli.experiment.config import ARMS, CANDIDATES, PAPER_RANKING
from carto_cli.experiment.report import summarise
from carto_cli.experiment.run import run_experiment

REPORTED = ("extraction_rate", "exposure", "val_ppl", "mia_auc", "kept_copies")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    calls = []
    results = run_experiment(out, quick=True, seeds=1, frac=0.1, progress=lambda *a: calls.append(a))
    return out, results, calls


def test_quick_run_writes_the_three_files(quick_run):
    out, results, _ = quick_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in table
    saved = sorted(p.stem for p in (out / "runs").glob("*.json"))  # each run, written as it finished
    assert saved == sorted(["development-baseline", *(f"seed-0-{arm}" for arm in ARMS)])


def test_every_arm_has_every_metric(quick_run):
    _, results, _ = quick_run
    assert set(results["arms"]) == set(ARMS)
    for name, arm in results["arms"].items():
        for metric in REPORTED:
            assert len(arm[metric]["per_seed"]) == 1, (name, metric)
            assert math.isfinite(arm[metric]["mean"]), (name, metric)
        assert 0 <= arm["extraction_rate"]["mean"] <= 1 and 0 <= arm["mia_auc"]["mean"] <= 1
        assert arm["val_ppl"]["mean"] > 1


def test_arms_keep_what_they_should(quick_run):
    _, results, _ = quick_run
    arms = results["arms"]
    assert arms["baseline"]["kept_copies"]["mean"] == 1.0
    assert arms["oracle"]["kept_copies"]["mean"] == 0.0
    steps = {name: arm["steps"][0] for name, arm in arms.items()}
    for name, n in steps.items():  # the same presentations; steps differ by short last batches only
        assert abs(n / steps["baseline"] - 1) < 0.05, (name, steps)
    chosen = results["carto_ranking"]["chosen"]
    assert tuple(chosen["ranking"]) in CANDIDATES and tuple(chosen["ranking"]) != PAPER_RANKING


def test_progress_reaches_the_end(quick_run):
    _, _, calls = quick_run
    assert calls[-1] == ("done", 1 + len(ARMS), 1 + len(ARMS))  # 1 development run + every arm
    assert all(0 <= done <= total for _, done, total in calls)


def test_summarise_gives_a_t_interval():
    assert summarise([1.0])["ci95"] is None
    lo, hi = summarise([1.0, 2.0, 3.0])["ci95"]
    assert lo < 2.0 < hi and hi - 2.0 == pytest.approx(4.303 * 1 / math.sqrt(3), rel=1e-3)


@pytest.mark.parametrize("args", [["--seeds", "0"], ["--frac", "0"], ["--frac", "1.5"], ["--regime", "huge"],
                                  ["--arms", "default,everything"]])
def test_bad_options_are_refused(tmp_path, args):
    app = typer.Typer()
    app.command()(experiment_command)
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "x"), "--quick", *args])
    assert isinstance(result.exception, OptionError)
    assert not (tmp_path / "x").exists()


def test_run_experiment_refuses_bad_options(tmp_path):
    with pytest.raises(OptionError, match="seeds"):
        run_experiment(tmp_path, quick=True, seeds=0, frac=0.1)
    (tmp_path / "file").write_text("")
    with pytest.raises(OptionError, match="is a file"):
        run_experiment(tmp_path / "file", quick=True, seeds=1, frac=0.1)


def test_parallel_runs_give_the_same_results(quick_run, tmp_path):
    """--jobs 2 trains in spawned worker processes (one torch thread each, as the quick
    configuration uses in-process): every number must be the same as the serial run's."""
    _, serial, _ = quick_run
    parallel = run_experiment(tmp_path, quick=True, seeds=1, frac=0.1, jobs=2)
    assert parallel["arms"] == serial["arms"]
    assert parallel["rankings"] == serial["rankings"]
    assert parallel["carto_ranking"]["chosen"] == serial["carto_ranking"]["chosen"]


def test_results_compare_every_ranking_and_state_the_headline(quick_run):
    _, results, _ = quick_run
    assert {tuple(row["ranking"]) for row in results["carto_ranking"]["candidates"]} == {PAPER_RANKING, *CANDIDATES}
    assert set(results["rankings"]) == {"training", "evaluation"}  # training-time logs and eval passes
    for source in results["rankings"].values():
        assert len(source) == 1 + len(CANDIDATES)
        for entry in source.values():
            assert 0 <= entry["canary_recall"]["mean"] <= 1 and 0 <= entry["carrier_auc"]["mean"] <= 1
    assert set(results["headline"]) == set(ARMS) - {"baseline"}
    extracted = results["arms"]["baseline"]["extraction_rate"]["mean"] > 0
    for entry in results["headline"].values():  # no cut to compute when the baseline extracts nothing
        assert (entry["extraction_cut"] is not None) == extracted
        assert entry["holds_for_means"] is False or extracted
    assert set(results["rank_vs_exposure"]) == {"paper", "default", "carto"}


def test_evaluation_passes_are_logged_without_changing_training(tmp_path):
    """The baseline's evaluation passes (forward only, eval mode) log every row once per epoch at
    the epoch's last step, and the model trains exactly as it would without them."""
    from dataclasses import replace

    import numpy as np
    import polars as pl

    from carto_cli.experiment.arms import baseline_run, prepare_seed
    from carto_cli.experiment.config import QUICK
    from carto_cli.experiment.corpus import cpython_text, to_bytes_samples
    from carto_cli.experiment.training import train_and_evaluate

    data = prepare_seed(QUICK, to_bytes_samples(cpython_text(QUICK.corpus_bytes), QUICK.sample_len), seed=5)
    run = baseline_run(QUICK, data, 5, tmp_path)
    with_passes = train_and_evaluate(run)
    without = train_and_evaluate(replace(run, eval_log_dir=None, log_dir=tmp_path / "other"))
    cost = ("wall_s", "peak_rss_mib")  # what the runs cost differs; every number they measured must not
    measured = {k: v for k, v in with_passes.items() if k not in cost}
    assert measured == {k: v for k, v in without.items() if k not in cost}
    passes = pl.read_parquet(tmp_path / "eval_logs").sort("epoch", "sample_id")
    n = len(data.train)
    assert passes.height == QUICK.epochs * n
    steps_per_epoch = -(-n // QUICK.batch_size)
    for epoch, group in passes.group_by("epoch"):
        assert sorted(group["sample_id"]) == list(range(n))
        assert set(group["step"]) == {(epoch[0] + 1) * steps_per_epoch}
    assert passes["token_loss"].null_count() == 0
    assert np.isfinite(passes["loss"].to_numpy()).all()


def test_headline_and_results_are_json_even_where_the_baseline_extracts(quick_run):
    """Synthetic seeds whose baseline extracts canaries: the headline is computed (numpy scalars
    must not leak into results.json) and says yes only where both conditions hold."""
    from carto_cli.experiment.report import _headline

    def arm(extraction, ppl):
        return {"extraction_rate": extraction, "val_ppl": ppl}

    runs = [{"arms": {"baseline": arm(0.8, 10.0), "paper": arm(0.8, 10.01), "default": arm(0.4, 10.01),
                      "carto": arm(0.2, 10.02),
                      "random": arm(0.7, 10.0), "loss": arm(0.4, 10.3), "weights": arm(0.6, 10.0),
                      "oracle": arm(0.0, 9.9)}} for _ in range(3)]
    runs[1]["arms"]["carto"] = arm(0.3, 10.03)
    headline = json.loads(json.dumps(_headline(runs, tuple(runs[0]["arms"]))))
    assert headline["carto"]["holds_for_means"] is True and headline["carto"]["holds_for_intervals"] is True
    assert headline["paper"]["holds_for_means"] is False  # no cut
    assert headline["default"]["holds_for_means"] is True  # cut 50% at +0.1%
    assert headline["loss"]["holds_for_means"] is False  # cut 50% but perplexity +3%
    assert headline["carto"]["extraction_cut"]["mean"] == pytest.approx((0.75 + 0.625 + 0.75) / 3)
    _, results, _ = quick_run
    json.dumps(results)  # raises on a numpy scalar


def test_a_regime_without_the_carto_arm_trains_no_development_seed(tmp_path):
    """The data-rich regime runs six arms and no development seed (nothing to choose): the same
    code path, shown on the quick sizes with the data-rich regime's arms."""
    from dataclasses import replace

    from carto_cli.experiment.config import DATA_RICH, QUICK

    cfg = replace(QUICK, arms=DATA_RICH.arms)
    results = run_experiment(tmp_path, quick=True, seeds=1, frac=0.1, config=cfg)
    assert tuple(results["arms"]) == DATA_RICH.arms and "carto" not in DATA_RICH.arms
    assert results["carto_ranking"] is None
    saved = sorted(p.stem for p in (tmp_path / "runs").glob("*.json"))
    assert saved == sorted(f"seed-0-{arm}" for arm in DATA_RICH.arms)
    assert set(results["headline"]) == set(DATA_RICH.arms[1:])
    assert set(results["rank_vs_exposure"]) == {"paper"}
    table = (tmp_path / "results.md").read_text()
    assert "development seed" not in table and "| signal |" in table
    # weights follow `carto weights` at its defaults: over the default scores
    weights = sorted((tmp_path / "seed0").glob("weights.parquet"))
    assert weights and (tmp_path / "seed0" / "scores-default.parquet").exists()


def test_without_a_development_seed_parallel_arms_start_after_their_own_baseline(tmp_path):
    """With --jobs > 1 and nothing to choose, a seed's arms start as soon as its own baseline is
    done (no worker waits for the last baseline): the same runs, the same numbers as one at a time."""
    from dataclasses import replace

    from carto_cli.experiment.config import DATA_RICH, QUICK

    cfg = replace(QUICK, arms=("baseline", "default", "random", "oracle"))
    serial = run_experiment(tmp_path / "serial", quick=True, seeds=2, frac=0.1, config=cfg)
    finished = []
    parallel = run_experiment(tmp_path / "parallel", quick=True, seeds=2, frac=0.1, config=cfg, jobs=2,
                              progress=lambda description, done, total: finished.append((done, total)))
    assert parallel["arms"] == serial["arms"] and parallel["rankings"] == serial["rankings"]
    assert parallel["headline"] == serial["headline"]
    assert finished[-2:] == [(8, 8), (8, 8)]  # the last run finished (2 seeds x 4 runs, each counted once), then "done"
    assert sorted(p.name for p in (tmp_path / "parallel" / "runs").iterdir()) == \
        sorted(p.name for p in (tmp_path / "serial" / "runs").iterdir())
    assert "carto" not in DATA_RICH.arms  # the default regime takes this path


def test_an_unknown_regime_is_one_clear_error(tmp_path):
    with pytest.raises(OptionError, match="--regime must be one of short, data-rich, small, data-rich-gpu"):
        run_experiment(tmp_path, quick=False, seeds=1, frac=0.1, regime="huge")
    from carto_cli.errors import ChoiceError

    with pytest.raises(ChoiceError):  # a usage error: exit 2 on the command line
        run_experiment(tmp_path, quick=False, seeds=1, frac=0.1, regime="huge")


def test_device_must_be_one_torch_can_use_here(tmp_path, monkeypatch):
    """`--device cuda` on a machine without a GPU is one clear line before any work (whatever machine
    the tests run on: CUDA is hidden here), as is a device the experiment does not run on."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="--device cuda: torch sees no CUDA device here"):
        run_experiment(tmp_path / "gpu", quick=True, seeds=1, frac=0.1, device="cuda")
    with pytest.raises(OptionError, match="--device cuda: torch sees no CUDA device here"):
        run_experiment(tmp_path / "gpu", quick=False, seeds=1, frac=0.1, regime="data-rich-gpu")
    with pytest.raises(OptionError, match="--device tpu: not a torch device"):
        run_experiment(tmp_path / "tpu", quick=True, seeds=1, frac=0.1, device="tpu")
    with pytest.raises(OptionError, match="--device meta: the experiment runs on cpu or cuda"):
        run_experiment(tmp_path / "meta", quick=True, seeds=1, frac=0.1, device="meta")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_gpu_regime_is_the_data_rich_one_with_a_larger_model():
    from carto_cli.experiment.config import DATA_RICH, DATA_RICH_GPU, REGIMES

    assert REGIMES["data-rich-gpu"] is DATA_RICH_GPU and DATA_RICH_GPU.device == "cuda"
    same = ("corpus_bytes", "sample_len", "epochs", "batch_size", "repetitions", "per_count", "n_references",
            "early_epochs", "arms")
    assert all(getattr(DATA_RICH_GPU, name) == getattr(DATA_RICH, name) for name in same)
    assert DATA_RICH_GPU.n_layer * DATA_RICH_GPU.n_embd ** 2 > 10 * DATA_RICH.n_layer * DATA_RICH.n_embd ** 2


def test_arms_chooses_which_arms_run_and_refuses_unknown_ones(tmp_path):
    from carto_cli.experiment.config import QUICK
    from carto_cli.io import artifacts

    results = run_experiment(tmp_path, quick=True, seeds=1, frac=0.2, arms=("signal", "default-half", "default"))
    assert tuple(results["arms"]) == ("baseline", "default", "default-half", "signal")  # ARMS order, baseline first
    signal = pl.read_parquet(tmp_path / "seed0" / "manifest-signal.parquet")
    assert (~signal["keep"]).sum() == int(0.2 * signal.height)  # the default signal's top 20%
    for arm, frac in (("default", 0.2), ("default-half", 0.1)):  # every copy of whole findings, at most frac
        manifest, provenance = artifacts.read(tmp_path / "seed0" / f"manifest-{arm}.parquet", "manifest")
        assert provenance["parameters"] == {"frac": frac, "arm": arm}
        assert (~manifest["keep"]).sum() <= int(frac * manifest.height)
    assert QUICK.arms[0] == "baseline"
    with pytest.raises(OptionError, match="--arms takes names from"):
        run_experiment(tmp_path, quick=True, seeds=1, frac=0.1, arms=("default", "everything"))


def test_pooling_one_run_reproduces_its_own_summary(tmp_path):
    """scripts/pool_experiments.py concatenates the per-seed values of runs on disjoint seeds and
    summarises them as `carto experiment` does: pooled alone, a run gives back its own figures;
    runs that share a seed, or differ in configuration, are refused."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("pool_experiments", root / "scripts" / "pool_experiments.py")
    pool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pool)
    path = root / "docs" / "experiment-results" / "data-rich" / "results.json"
    results = json.loads(path.read_text())
    pooled = pool.pool([path])
    for arm, entry in results["headline"].items():
        assert pooled["headline"][arm]["extraction_cut"] == entry["extraction_cut"]
        assert pooled["headline"][arm]["ppl_rise"] == entry["ppl_rise"]
        assert pooled["headline"][arm]["holds_for_means"] == entry["holds_for_means"]
    assert pooled["arms"]["default"]["val_ppl"] == results["arms"]["default"]["val_ppl"]
    assert pooled["rankings"] == {source: {name: {m: row[m] for m in ("canary_recall", "carrier_auc")}
                                           for name, row in rows.items()}
                                  for source, rows in results["rankings"].items()}
    refused = subprocess.run([sys.executable, str(root / "scripts" / "pool_experiments.py"), str(path), str(path)],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "seeds overlap" in refused.stderr
    later = tmp_path / "later.json"  # a later run on other seeds, whose config records `device` (its default)
    later.write_text(json.dumps({**results, "seeds": [7, 8, 9], "config": {**results["config"], "device": "cpu"}}))
    assert pool.pool([path, later])["seeds"] == [4, 5, 6, 7, 8, 9]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**results, "seeds": [7, 8, 9], "config": {**results["config"], "lr": 1.0}}))
    refused = subprocess.run([sys.executable, str(root / "scripts" / "pool_experiments.py"), str(path), str(other)],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "configurations differ" in refused.stderr


def test_prune_precision_reads_a_runs_own_files(quick_run):
    """scripts/prune_precision.py (the findings issue's done-when, measured on a run's fresh seeds)
    reads only what the run wrote; on the quick run, whose baseline memorizes nothing, the default
    arm prunes nothing and the table says so."""
    import subprocess
    import sys
    from pathlib import Path

    out, results, _ = quick_run
    script = Path(__file__).resolve().parent.parent / "scripts" / "prune_precision.py"
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, check=True)
    extracted = sum(c["extracted"] for c in results["per_canary"]["baseline"][0])
    canaries = len(results["per_canary"]["baseline"][0])
    pruned = int((~pl.read_parquet(out / "seed0" / "manifest-default.parquet")["keep"]).sum())
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 0 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == f"{extracted}/{canaries}" and cells[3] == f"{pruned:,}"
