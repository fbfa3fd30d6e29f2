"""carto against what a user would do instead: does removing (or masking) what the model memorized
cut canary extraction at almost no cost in validation perplexity, and how do deduplication and the
Goldfish loss do on the same runs? (The GenDataCarto headline, Patel & Shanbhag 2025, arXiv
2509.00083: over 40% less extraction at under 0.5% perplexity.)

    from carto_cli.experiment.run import run_experiment
    results = run_experiment("exp/", quick=True, seeds=1, frac=0.1)   # a smoke run, every arm
    results = run_experiment("exp/", quick=False, seeds=6, frac=0.1, jobs=2, first_seed=30)  # the short regime
    # exp/results.json, exp/results.md, exp/results.png

What runs (`carto experiment` on the command line):
1. Corpus: CPython's own docs and sources (`corpus.cpython_text`), cut into byte windows and split
   into train and held-out validation rows. The regime (`config.REGIMES`) fixes the sizes and
   which arms run: `short` (the default: 64-byte samples, 12 canaries, carto's arms and the
   peers), `data-rich`, `small`, `data-rich-gpu`.
2. Per seed, fresh canaries (`canaries.plant`) go into the train rows, and `baseline` trains from
   scratch with the `CartoLogger` logging every presentation.
3. The baseline's logs are scored exactly as `carto score` does (`rankings.py`), at its defaults
   and with `--data` (the seed's train rows) and `--reference` (its validation rows) for the
   findings; the scoring path never sees the canaries. Every arm follows from those files only
   (`arms.py` for carto's arms and the references, `peers.py` for deduplication and the Goldfish
   loss; the arms are listed in `config.ARMS`).
4. Every arm trains from scratch from the same initial weights with the same budget, the
   baseline's E * N presentations, paired with the baseline (`config.Config.order`): a pruned arm
   keeps the baseline's order, its pruned rows' slots given to kept rows; a loss-masked arm keeps
   the baseline's rows and order.
5. Each arm is evaluated (`training.evaluate`, `metrics`) at the moving average of its weights:
   canary extraction (greedy, exact), exposure against the never-planted references (rank-based
   and skew-normal), validation perplexity (and each row's loss), the loss-based membership AUC;
   plus the share of each canary's copies still taught, and the perplexity at the final weights.
6. `paired.py` compares each arm with its own seed's baseline and states the goals; `report.py`
   writes results.json, results.md and results.png.

`executor.py` runs the training runs (in turn or in worker processes).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from carto_cli.errors import ChoiceError, OptionError
from carto_cli.experiment.arms import baseline_run, prepare_seed
from carto_cli.experiment.config import ARMS, DEV_SEED, QUICK, REGIMES, Config, Progress
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples
from carto_cli.experiment.executor import Tracker, run_all, run_pipelined, torch_threads
from carto_cli.experiment.rankings import choose_ranking, prepare_arms
from carto_cli.experiment.report import plot, render_markdown
from carto_cli.experiment.report import results as report_results
from carto_cli.export import manifests as export


def run_experiment(
    out_dir: str | Path, *, quick: bool, seeds: int, frac: float, jobs: int = 1, first_seed: int = 0,
    progress: Progress | None = None, regime: str = "short", config: Config | None = None,
    arms: tuple[str, ...] | None = None, device: str | None = None,
) -> dict:
    """Run every arm for `seeds` seeds; write results.json, results.md, results.png in `out_dir`.

    The sizes and arms are QUICK's when `quick`, else `regime`'s (a name in REGIMES); `config`
    overrides both, `arms` (names from ARMS; `baseline` is always run) the arms, and `device`
    (a torch device: "cpu", "cuda", "cuda:1") where training and evaluation run. `jobs` > 1 trains
    that many runs at once in worker processes (on a GPU they share it).
    """
    if regime not in REGIMES:
        raise ChoiceError(f"--regime must be one of {', '.join(REGIMES)}; got '{regime}'")
    cfg = config or (QUICK if quick else REGIMES[regime])
    if device is not None:
        cfg = replace(cfg, device=device)
    _check_device(cfg.device)
    if arms is not None:
        unknown = [arm for arm in arms if arm not in ARMS]
        if unknown or not arms:
            raise ChoiceError(f"--arms takes names from {', '.join(ARMS[1:])}; got '{','.join(arms)}'")
        cfg = replace(cfg, arms=tuple(arm for arm in ARMS if arm == "baseline" or arm in arms))
    if seeds < 1 or first_seed < 0 or first_seed + seeds > DEV_SEED:
        raise OptionError(f"--seeds {seeds} --first-seed {first_seed}: need --seeds >= 1, --first-seed >= 0 "
                          f"and every seed < {DEV_SEED}")
    if jobs < 1:
        raise OptionError(f"--jobs must be >= 1; got {jobs}")
    export.prune_count(0, frac)  # validates frac
    if frac == 0:
        raise OptionError("--frac must be > 0: with nothing pruned every arm is the baseline")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    samples = to_bytes_samples(cpython_text(cfg.corpus_bytes), cfg.sample_len)
    with_dev = "carto" in cfg.arms  # the development seed only chooses the `carto` arm's ranking
    tracker = Tracker(progress, total=int(with_dev) + seeds * len(cfg.arms))
    reported = range(first_seed, first_seed + seeds)
    data = {seed: prepare_seed(cfg, samples, seed) for seed in ((DEV_SEED,) if with_dev else ()) + tuple(reported)}
    work = {seed: out / ("dev" if seed == DEV_SEED else f"seed{seed}") for seed in data}
    with torch_threads(cfg.threads):
        if with_dev or jobs == 1:
            # 1. Every baseline (the development seed's too) trains with the logger on.
            baselines = run_all([baseline_run(cfg, data[s], s, work[s], out) for s in data], jobs, tracker)
            base = dict(zip(data, baselines))
            # 2. The development seed chooses carto's ranking; every reported seed's arms follow from
            #    its own baseline's logs only.
            dev = choose_ranking(cfg, data[DEV_SEED], frac, work[DEV_SEED], base[DEV_SEED]) if with_dev else None
            chosen = tuple(dev["chosen"]["ranking"]) if dev is not None else None
            seeds_ = [prepare_arms(cfg, data[s], frac, s, chosen, work[s]) for s in reported]
            # 3. Every other arm of every seed trains from scratch.
            later = [replace(run, out_dir=out) for seed_arms in seeds_ for run in seed_arms["runs"]]
            results = iter(run_all(later, jobs, tracker))
        else:  # nothing to choose: each seed's arms start as soon as its own baseline is done
            dev = None
            base, seeds_, arm_results = run_pipelined(cfg, data, reported, work, out, frac, jobs, tracker)
            results = iter(arm_results)
    runs = []
    for s, seed_arms in zip(reported, seeds_):
        by_arm = {"baseline": base[s], **{name: next(results) for name in cfg.arms[1:]}}
        runs.append({"seed": s, "arms": by_arm, "rankings": seed_arms["rankings"], "maps": seed_arms["maps"],
                     "canary_ranks": seed_arms["canary_ranks"], "carriers": data[s].canaries.carriers.tolist(),
                     "findings": seed_arms["findings"]})
        (work[s] / "canaries.json").write_text(json.dumps(data[s].canaries.to_dict(), indent=1) + "\n")
    results = report_results(cfg, quick, frac, dev, runs)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results))
    plot(results, runs[0], out / "results.png")
    if progress is not None:
        progress("done", tracker.total, tracker.total)
    return results


def _check_device(device: str) -> None:
    """A device torch can use here, or one line that says what to do instead."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise OptionError(f"--device {device}: not a torch device; use cpu or cuda") from None
    if kind not in ("cpu", "cuda"):
        raise OptionError(f"--device {device}: the experiment runs on cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {device}: torch sees no CUDA device here; run it on a machine with a GPU "
                          "and a CUDA build of torch, or use --device cpu")
