"""The GenDataCarto headline, re-run: does pruning 10% of the data by memorization cut canary
extraction by over 40% at under 0.5% validation perplexity (Patel & Shanbhag 2025, arXiv 2509.00083)?

    from carto_cli.experiment.run import run_experiment
    results = run_experiment("exp/", quick=True, seeds=1, frac=0.1)   # 10-20 s
    results = run_experiment("exp/", quick=False, seeds=3, frac=0.1, jobs=2)  # data-rich, ~51 min
    # exp/results.json, exp/results.md, exp/results.png

What runs (`carto experiment` on the command line):
1. Corpus: CPython's own docs and sources (`corpus.cpython_text`), cut into byte windows and split
   into train and held-out validation rows. The regime (`config.REGIMES`) fixes the sizes and
   which arms run: `data-rich` (the default: 256-byte samples, the whole corpus, 3 epochs) or
   `small` (the first reportable run: 64-byte samples, 9 epochs, every arm).
2. Per seed, fresh canaries (`canaries.plant`) go into the train rows, and `baseline` trains from
   scratch with the `CartoLogger` logging every presentation.
3. The baseline's logs are scored with `pipeline.run_score`, exactly as `carto score` does, and
   every ranking comes from those scores only (the scoring path never sees the canaries):
   - `paper`: the paper's rule (correct = greedy token accuracy >= 0.5, memorization = forget
     events / transitions, never-learned = 0), pruned by memorization;
   - `default`: `carto score` at its defaults (memorization = `extractable`, from the sketch the
     shim logs by default), pruned by memorization: what a user gets;
   - `carto`: the memorization ranking carto recommends for generative models, chosen once per
     experiment on a development seed with its own canaries among forget events under other
     correctness rules and the label-free signals token-drop, tail-var and extractable (see
     `choose_ranking`);
   - `default-half`: the same ranking, half the fraction (does a smaller prune keep the cut?);
   - `random`: the same fraction at random; `loss`: the highest early loss (difficulty) first;
   - `weights`: no pruning, `carto weights` at its defaults (`export.sample_weights` over the
     `default` scores) drawn by a WeightedRandomSampler (`sampling.weighted_sampler`);
   - `oracle`: removes exactly the samples that carry canaries, however many (13.3% in the
     data-rich regime, 7.2% in the small one): an upper bound, not a method.
   A regime without the `carto` arm trains no development seed.
   With `--jobs` > 1 and no development seed, a seed's arms start as soon as its own baseline is
   done; with one, every baseline trains first (the chosen ranking is needed by every seed).
4. Every arm trains from scratch from the same initial weights with the same budget, the
   baseline's E * N presentations: epochs over its own rows, the last one cut short where the
   budget ends (E = 3 and frac 0.1: three epochs and a third); the weights arm draws E * N.
5. Each arm is evaluated (`metrics`): canary extraction (greedy, exact), exposure against the
   never-planted references (rank-based and skew-normal), validation perplexity, and the loss-based
   membership AUC of canaries against references; plus the share of each canary's copies kept.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from scipy import stats

from carto_cli.engines import pipeline
from carto_cli.errors import OptionError
from carto_cli.experiment import metrics
from carto_cli.experiment.canaries import CanarySet, plant
from carto_cli.experiment.config import (
    ARMS,
    DEFAULT_RANKING,
    DEV_SEED,
    PAPER_RANKING,
    QUICK,
    RANKINGS,
    REGIMES,
    Config,
    OnStep,
    Progress,
    ranking_name,
)
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples, train_val_split
from carto_cli.experiment.report import plot, render_markdown
from carto_cli.experiment.report import results as report_results
from carto_cli.experiment.tinygpt import GPT, GPTConfig, count_steps, train_epochs
from carto_cli.export import manifests as export
from carto_cli.export import sampling
from carto_cli.io import artifacts, logs
from carto_cli.log.shim import CartoLogger
from carto_cli.score import rules


@dataclass
class SeedData:
    """One seed's rows: planted train rows, held-out validation rows, and the canary record."""

    train: np.ndarray  # (N, sample_len + 1) uint8, index = sample_id
    val: np.ndarray  # (M, sample_len + 1) uint8
    canaries: CanarySet


@dataclass
class Run:
    """One training run from scratch: which rows, how many epochs, and what to evaluate."""

    label: str  # e.g. "seed 0 · paper"
    cfg: Config
    data: SeedData
    seed: int  # fixes the initial weights and the batch order
    rows: np.ndarray  # indices into data.train, one epoch's worth, in this order
    epochs: int
    kept_share: np.ndarray  # (N,) each train row's presence (0/1) or weight, for kept_copies
    presentations: int | None = None  # stop after this many (the last epoch cut short); None: every epoch
    log_dir: Path | None = None  # log every presentation here (the baselines)
    eval_log_dir: Path | None = None  # and an evaluation pass over every row after each epoch here
    out_dir: Path | None = None  # the experiment's directory: runs/<label>.json is written there


# ---------------------------------------------------------------------------------- the run


def run_experiment(
    out_dir: str | Path, *, quick: bool, seeds: int, frac: float, jobs: int = 1, first_seed: int = 0,
    progress: Progress | None = None, regime: str = "data-rich", config: Config | None = None,
    arms: tuple[str, ...] | None = None, device: str | None = None,
) -> dict:
    """Run every arm for `seeds` seeds; write results.json, results.md, results.png in `out_dir`.

    The sizes and arms are QUICK's when `quick`, else `regime`'s (a name in REGIMES); `config`
    overrides both, `arms` (names from ARMS; `baseline` is always run) the arms, and `device`
    (a torch device: "cpu", "cuda", "cuda:1") where training and evaluation run. `jobs` > 1 trains
    that many runs at once in worker processes (on a GPU they share it).
    """
    if regime not in REGIMES:
        raise OptionError(f"--regime must be one of {', '.join(REGIMES)}; got '{regime}'")
    cfg = config or (QUICK if quick else REGIMES[regime])
    if device is not None:
        cfg = replace(cfg, device=device)
    _check_device(cfg.device)
    if arms is not None:
        unknown = [arm for arm in arms if arm not in ARMS]
        if unknown or not arms:
            raise OptionError(f"--arms takes names from {', '.join(ARMS[1:])}; got '{','.join(arms)}'")
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
    tracker = _Tracker(progress, total=int(with_dev) + seeds * len(cfg.arms))
    reported = range(first_seed, first_seed + seeds)
    data = {seed: _prepare(cfg, samples, seed) for seed in ((DEV_SEED,) if with_dev else ()) + tuple(reported)}
    work = {seed: out / ("dev" if seed == DEV_SEED else f"seed{seed}") for seed in data}
    with _torch_threads(cfg.threads):
        if with_dev or jobs == 1:
            # 1. Every baseline (the development seed's too) trains with the logger on.
            baselines = _run_all([_baseline_run(cfg, data[s], s, work[s], out) for s in data], jobs, tracker)
            base = dict(zip(data, baselines))
            # 2. The development seed chooses carto's ranking; every reported seed's arms follow from
            #    its own baseline's logs only.
            dev = choose_ranking(cfg, data[DEV_SEED], frac, work[DEV_SEED], base[DEV_SEED]) if with_dev else None
            chosen = tuple(dev["chosen"]["ranking"]) if dev is not None else None
            seeds_ = [prepare_arms(cfg, data[s], frac, s, chosen, work[s]) for s in reported]
            # 3. Every other arm of every seed trains from scratch.
            arm_runs = [replace(run, out_dir=out) for seed_arms in seeds_ for run in seed_arms["runs"]]
            results = iter(_run_all(arm_runs, jobs, tracker))
        else:  # nothing to choose: each seed's arms start as soon as its own baseline is done
            dev = None
            base, seeds_, arm_results = _run_pipelined(cfg, data, reported, work, out, frac, jobs, tracker)
            results = iter(arm_results)
    runs = []
    for s, seed_arms in zip(reported, seeds_):
        by_arm = {"baseline": base[s], **{name: next(results) for name in cfg.arms[1:]}}
        runs.append({"seed": s, "arms": by_arm, "rankings": seed_arms["rankings"], "maps": seed_arms["maps"],
                     "canary_ranks": seed_arms["canary_ranks"], "carriers": data[s].canaries.carriers.tolist()})
        (work[s] / "canaries.json").write_text(json.dumps(data[s].canaries.to_dict(), indent=1) + "\n")
    results = report_results(cfg, quick, frac, dev, runs)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results))
    plot(results, runs[0], out / "results.png")
    if progress is not None:
        progress("done", tracker.total, tracker.total)
    return results


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
        scores = _score(log_dir, _params(cfg, *ranking), out)
        keep = _keep_mask(export.prune_manifest(scores, frac=frac, by="memorization"), len(data.train))
        table.append({"ranking": list(ranking), "name": ranking_name(ranking), "source": source,
                      "canary_recall": float(1 - keep[carriers].mean()),
                      "carrier_auc": _carrier_auc(scores, carriers)})
    return table


def prepare_arms(
    cfg: Config, data: SeedData, frac: float, seed: int, carto_ranking: tuple | None, work: Path
) -> dict:
    """Score one seed's baseline logs and set up the runs of its arms after the baseline, in
    `cfg.arms` order (of paper, default, carto, random, loss, weights, oracle)."""
    n = len(data.train)
    log_dir = work / "logs"
    rankings = (compare_rankings(cfg, data, frac, log_dir, work)
                + compare_rankings(cfg, data, frac, work / "eval_logs", work, source="evaluation"))
    scored = {"paper": _score(log_dir, _params(cfg, *PAPER_RANKING), work / "scores-paper.parquet"),
              "default": _score(log_dir, _params(cfg, *DEFAULT_RANKING), work / "scores-default.parquet")}
    if "carto" in cfg.arms:
        scored["carto"] = _score(log_dir, _params(cfg, *carto_ranking), work / "scores-carto.parquet")
    # The pruning arms: (scores they rank, fraction pruned, prune order)
    prunes = {"paper": ("paper", frac, "memorization"), "default": ("default", frac, "memorization"),
              "default-half": ("default", frac / 2, "memorization"), "carto": ("carto", frac, "memorization"),
              "random": ("paper", frac, "random"), "loss": ("paper", frac, "difficulty")}
    runs = []
    for name in cfg.arms[1:]:
        if name == "weights":
            runs.append(_weighted_run(cfg, data, scored["default"], seed, work))
        elif name == "oracle":
            oracle = np.setdiff1d(np.arange(n), data.canaries.carriers)
            runs.append(_pruned_run(cfg, data, oracle, seed, f"seed {seed} · oracle"))
        else:
            source, arm_frac, by = prunes[name]
            path = work / f"manifest-{name}.parquet"
            manifest = export.prune_manifest(scored[source], frac=arm_frac, by=by, seed=seed)
            _write(manifest, path, "manifest", {"frac": arm_frac, "arm": name})
            runs.append(_pruned_run(cfg, data, np.array(sampling.kept_indices(path, n)), seed,
                                    f"seed {seed} · {name}"))
    return {"runs": runs, "rankings": rankings, "maps": {name: _map(s) for name, s in scored.items()},
            "canary_ranks": {name: _canary_ranks(s, data.canaries) for name, s in scored.items()}}


# ----------------------------------------------------------------------------- the arms


def _prepare(cfg: Config, samples: np.ndarray, seed: int) -> SeedData:
    train, val = train_val_split(samples, cfg.val_frac, seed)
    planted, canaries = plant(train, repetitions=cfg.repetitions, per_count=cfg.per_count,
                              n_references=cfg.n_references, seed=seed)
    return SeedData(planted, val, canaries)


def _baseline_run(cfg: Config, data: SeedData, seed: int, work: Path, out: Path | None = None) -> Run:
    """Every row, `cfg.epochs` epochs, logged (with per-token losses) to work/logs; after each
    epoch an evaluation pass over every row (no update) is logged to work/eval_logs."""
    n = len(data.train)
    label = "development baseline" if seed == DEV_SEED else f"seed {seed} · baseline"
    return Run(label, cfg, data, seed, np.arange(n), cfg.epochs, np.ones(n), log_dir=work / "logs",
               eval_log_dir=work / "eval_logs", out_dir=out)


def _pruned_run(cfg: Config, data: SeedData, kept: np.ndarray, seed: int, label: str) -> Run:
    """The kept rows for exactly the baseline's presentations, epochs * N: whole epochs over the
    kept rows, the last one cut short (3 epochs over 90% of the rows is 3 full epochs and a third)."""
    n = len(data.train)
    keep = np.zeros(n)
    keep[kept] = 1.0
    budget = cfg.epochs * n
    return Run(label, cfg, data, seed, kept, -(-budget // max(1, len(kept))), keep, presentations=budget)


def _weighted_run(cfg: Config, data: SeedData, scores: pl.DataFrame, seed: int, work: Path) -> Run:
    """epochs * N presentations drawn by carto's weights (with replacement), trained in one pass."""
    n = len(data.train)
    path = work / "weights.parquet"
    _write(export.sample_weights(scores), path, "weights", {"multipliers": export.DEFAULT_MULTIPLIERS})
    sampler = sampling.weighted_sampler(path, n, num_samples=cfg.epochs * n,
                                        generator=torch.Generator().manual_seed(seed))
    drawn = np.fromiter(iter(sampler), dtype=np.int64)  # (epochs * N,)
    return Run(f"seed {seed} · weights", cfg, data, seed, drawn, 1, sampling.sample_weight_array(path, n))


def train_and_evaluate(run: Run, on_step: OnStep = None) -> dict:
    """Train a fresh model on `run`'s rows (initial weights fixed by its seed), then evaluate it."""
    cfg = run.cfg
    torch.manual_seed(run.seed)
    model = GPT(GPTConfig(block_size=cfg.sample_len, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))
    model.to(cfg.device)  # made on the CPU first: the same initial weights on any device
    rows = run.data.train[run.rows]
    with ExitStack() as stack:
        logger = eval_logger = on_epoch_end = None
        if run.log_dir is not None:
            logger = stack.enter_context(CartoLogger(_fresh(run.log_dir), token_losses=True))
        if run.eval_log_dir is not None:
            eval_logger = stack.enter_context(CartoLogger(_fresh(run.eval_log_dir), token_losses=True))

            def on_epoch_end(epoch: int, step: int) -> None:
                log_evaluation_pass(model, rows, run.rows, eval_logger, epoch=epoch, step=step,
                                    batch_size=cfg.batch_size)

        train_epochs(model, rows, epochs=run.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=run.seed,
                     logger=logger, progress=on_step, on_epoch_end=on_epoch_end, presentations=run.presentations)
    budget = run.epochs * len(rows) if run.presentations is None else run.presentations
    return _evaluate(model, run.data, run.kept_share, steps=count_steps(len(rows), cfg.batch_size, budget))


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


def _fresh(directory: Path) -> Path:
    """An empty log directory: a rerun must not mix its presentations with an earlier run's."""
    if directory.exists():
        shutil.rmtree(directory)
    return directory


@torch.no_grad()
def log_evaluation_pass(model: GPT, rows: np.ndarray, sample_ids: np.ndarray, logger: CartoLogger, *,
                        epoch: int, step: int, batch_size: int) -> None:
    """One forward pass over `rows` in eval mode, no update, each row logged as a presentation
    (epoch = the training epoch just finished, step = the steps so far): the forgetting
    literature's periodic evaluation, against which training-time logging is compared."""
    model.eval()
    device = next(model.parameters()).device
    data = torch.as_tensor(rows, dtype=torch.long)  # (N, T + 1)
    ids = torch.as_tensor(sample_ids)
    for lo in range(0, len(data), batch_size):
        batch = data[lo : lo + batch_size].to(device)  # (B, T + 1)
        logger.record(ids[lo : lo + batch_size], epoch=epoch, step=step, logits=model(batch[:, :-1]),
                      labels=batch[:, 1:])
    model.train()


def _run_all(runs: list[Run], jobs: int, tracker: _Tracker) -> list[dict]:
    """`train_and_evaluate` every run, in order, or `jobs` at a time in spawned worker processes."""
    if jobs == 1 or len(runs) == 1:
        return [_save_run(run, train_and_evaluate(run, tracker.run(run.label))) for run in runs]
    threads = runs[0].cfg.threads or 1
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=context,
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(train_and_evaluate, run): run for run in runs}
        for future in as_completed(futures):
            _save_run(futures[future], future.result())  # a failed run stops the experiment here
            tracker.finished(futures[future].label)
        return [future.result() for future in futures]


def _run_pipelined(cfg: Config, data: dict, reported: range, work: dict, out: Path, frac: float, jobs: int,
                   tracker: _Tracker) -> tuple[dict, list[dict], list[dict]]:
    """Every reported seed's baseline, then its arms as soon as that baseline is done, `jobs` runs
    at a time in spawned worker processes (the same runs as `_run_all` makes, in another order:
    no worker waits for the last baseline). Returns the baselines' metrics by seed, each seed's
    `prepare_arms`, and the arms' metrics in seed order, then `cfg.arms` order."""
    context = multiprocessing.get_context("spawn")
    prepared, metrics = {}, {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(cfg.threads or 1,)) as pool:
        pending = {pool.submit(train_and_evaluate, run): (seed, "baseline", run)
                   for seed, run in ((s, _baseline_run(cfg, data[s], s, work[s], out)) for s in reported)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                seed, arm, run = pending.pop(future)
                metrics[seed, arm] = _save_run(run, future.result())  # a failed run stops the experiment here
                tracker.finished(run.label)
                if arm == "baseline":  # its arms follow from its own logs only
                    prepared[seed] = prepare_arms(cfg, data[seed], frac, seed, None, work[seed])
                    for index, arm_run in enumerate(prepared[seed]["runs"]):
                        arm_run = replace(arm_run, out_dir=out)
                        pending[pool.submit(train_and_evaluate, arm_run)] = (seed, index, arm_run)
    arms = [metrics[s, i] for s in reported for i in range(len(prepared[s]["runs"]))]
    return {s: metrics[s, "baseline"] for s in reported}, [prepared[s] for s in reported], arms


def _save_run(run: Run, metrics: dict) -> dict:
    """Write one run's metrics to runs/<label>.json beside the seed's work as soon as it finishes,
    so that a later failure loses no finished run (a record, never read back as a cache)."""
    directory = run.out_dir / "runs" if run.out_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        name = run.label.replace(" · ", "-").replace(" ", "-")
        (directory / f"{name}.json").write_text(json.dumps(metrics, indent=1, default=float) + "\n")
    return metrics


@contextmanager
def _torch_threads(threads: int | None):
    """Run the block with `threads` torch intra-op threads (when given), then restore the setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------ scores and exports


def _params(cfg: Config, memorization: str, correct_from: str, threshold: str | None) -> rules.ScoreParams:
    return rules.ScoreParams(early_epochs=cfg.early_epochs, correct_from=correct_from, threshold=threshold,
                               memorization=memorization)


def _slug(ranking: tuple) -> str:
    return "-".join(str(part) for part in ranking if part is not None)


def _score(log_dir: Path, params: rules.ScoreParams, out: Path) -> pl.DataFrame:
    """`carto score LOG_DIR` with `params`: write the scores file, read it back."""
    pipeline.run_score(logs.open_logs([log_dir]), params, out=out, inputs=[str(log_dir)])
    return artifacts.read(out, "scores")[0]


def _write(frame: pl.DataFrame, path: Path, kind: str, parameters: dict) -> None:
    artifacts.write(frame, path, artifacts.provenance(kind, inputs=[], parameters=parameters))


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


# --------------------------------------------------------------------------------- evaluation


def _evaluate(model: GPT, data: SeedData, kept_share: np.ndarray, *, steps: int) -> dict:
    """Every metric of one trained arm. `kept_share[i]`: row i's presence (0/1) or weight."""
    cs = data.canaries
    prefixes = [c.prefix for c in cs.canaries]
    secrets = [c.secret for c in cs.canaries]
    refs = list(cs.references)
    canary_lp = metrics.secret_log_perplexity(model, prefixes, secrets)  # (C,) bits
    ref_lp = metrics.secret_log_perplexity(
        model, [p for p in prefixes for _ in refs], refs * len(prefixes)
    ).reshape(len(prefixes), len(refs))  # (C, R): the references under each canary's prefix
    per_canary = [
        {
            "key": c.key,
            "repetitions": c.repetitions,
            "extracted": bool(hit),
            "exposure": metrics.exposure(lp, ref),
            "exposure_skewnorm": metrics.exposure_skewnorm(lp, ref),
            "kept_copies": float(kept_share[list(c.sample_ids)].sum() / c.repetitions),
        }
        for c, hit, lp, ref in zip(cs.canaries, metrics.extraction_successes(model, prefixes, secrets),
                                   canary_lp, ref_lp)
    ]
    return {
        "extraction_rate": float(np.mean([c["extracted"] for c in per_canary])),
        "exposure": float(np.mean([c["exposure"] for c in per_canary])),
        "exposure_skewnorm": float(np.mean([c["exposure_skewnorm"] for c in per_canary])),
        "val_ppl": metrics.perplexity(model, data.val),
        "mia_auc": metrics.membership_auc(canary_lp, ref_lp.ravel()),
        "kept_copies": float(np.mean([c["kept_copies"] for c in per_canary])),
        "steps": steps,
        "per_canary": per_canary,
    }



class _Tracker:
    """Turns per-step callbacks of each training run into `progress(description, runs done, runs)`."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.started = 0

    def finished(self, description: str) -> None:
        """A run finished in a worker process (no per-step progress from there)."""
        self.started += 1
        if self.progress is not None:
            self.progress(description, self.started, self.total)

    def run(self, description: str) -> OnStep:
        index = self.started
        self.started += 1
        if self.progress is None:
            return None
        self.progress(description, index, self.total)
        return lambda step, steps: self.progress(description, index + step / steps, self.total)
