"""The GenDataCarto headline, re-run: does pruning 10% of the data by memorization cut canary
extraction by over 40% at under 0.5% validation perplexity (Patel & Shanbhag 2025, arXiv 2509.00083)?

    from carto_cli.experiment import run_experiment
    results = run_experiment("exp/", quick=True, seeds=1, frac=0.1)   # 10-20 s
    # exp/results.json, exp/results.md, exp/results.png

What runs (`carto experiment` on the command line):
1. Corpus: CPython's own docs and sources (`corpus.cpython_text`), cut into byte windows and split
   into train and held-out validation rows.
2. Per seed, fresh canaries (`canaries.plant`) go into the train rows, and `baseline` trains from
   scratch with the `CartoLogger` logging every presentation.
3. The baseline's logs are scored with `pipeline.run_score`, exactly as `carto score` does, and
   every ranking comes from those scores only (the scoring path never sees the canaries):
   - `paper`: `carto score` defaults (correct = greedy token accuracy >= 0.5, memorization =
     forget events / transitions, never-learned = 0), pruned by memorization;
   - `carto`: the correctness rule carto recommends for generative models, chosen once per
     experiment on a development seed with its own canaries (see `choose_rule`), pruned by
     memorization;
   - `random`: the same fraction at random; `loss`: the highest early loss (difficulty) first;
   - `weights`: no pruning, carto's quadrant weights (`export.sample_weights`, scored by the
     `carto` rule) drawn by a WeightedRandomSampler (`sampling.weighted_sampler`);
   - `oracle`: removes exactly the samples that carry canaries, however many (7% in the default
     configuration): an upper bound, not a method.
4. Every arm trains from scratch from the same initial weights with the same budget: whole epochs
   over its own rows, as many as make up the baseline's presentations (`round(E * N / kept)`; with
   E = 9 and frac 0.1 that is exactly 10 epochs); the weights arm draws E * N presentations.
5. Each arm is evaluated (`metrics`): canary extraction (greedy, exact), exposure against the
   never-planted references (rank-based and skew-normal), validation perplexity, and the loss-based
   membership AUC of canaries against references; plus the share of each canary's copies kept.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from scipy import stats

from carto_cli import (
    __version__,
    artifacts,
    export,
    logs,
    metrics,
    pipeline,
    sampling,
    scoring,
)
from carto_cli.canaries import CanarySet, plant
from carto_cli.corpus import cpython_text, to_bytes_samples, train_val_split
from carto_cli.errors import OptionError
from carto_cli.shim import CartoLogger
from carto_cli.tinygpt import GPT, GPTConfig, train_epochs

ARMS = ("baseline", "paper", "carto", "random", "loss", "weights", "oracle")
METRICS = ("extraction_rate", "exposure", "exposure_skewnorm", "val_ppl", "mia_auc", "kept_copies")
DEV_SEED = 1000  # the development seed (canaries, split, init) that chooses carto's rule
Progress = Callable[[str, float, int], None]  # (description, runs completed, runs in all)
OnStep = Callable[[int, int], None] | None  # train_epochs' progress(step, total_steps)


@dataclass(frozen=True)
class Config:
    """Sizes of one experiment. Budget per run: epochs * (train rows) presentations of sample_len."""

    corpus_bytes: int
    sample_len: int
    n_layer: int
    n_head: int
    n_embd: int
    epochs: int
    batch_size: int
    lr: float
    repetitions: tuple[int, ...]
    per_count: int  # canaries per repetition count
    n_references: int
    early_epochs: int  # the paper's T_e: difficulty is the mean loss over epochs < early_epochs
    val_frac: float = 0.1
    threads: int | None = None  # torch intra-op threads while training; None leaves torch's choice


# A smoke run: every arm end to end, 10-20 s on 2 shared CPU cores (it shows nothing: no canary is
# extracted). One thread: for a model this small thread hand-offs cost more than they save; on a
# loaded 2-core machine two threads made the run 13x slower (257 s against 19 s).
QUICK = Config(corpus_bytes=30_000, sample_len=48, n_layer=1, n_head=2, n_embd=32, epochs=9,
               batch_size=32, lr=1e-2, repetitions=(8, 16), per_count=2, n_references=32, early_epochs=2,
               threads=1)
# About 45 minutes with 3 seeds on 2 cores at the measured ~31k tokens/s (3 layers, d=128):
# 22 runs (1 development + 3 seeds x 7 arms) of 9 epochs x ~5.8k rows x 64 tokens = 3.3M tokens.
# (On a 2-core machine shared with another job, one run took 200 s, 17k tokens/s: ~80 minutes.)
# Calibrated on seed 0 (baseline only, the arms untouched): with (8, 16, 32) x 6 canaries the
# baseline extracted 0/6, 4/6, 5/6; with (12, 24, 48) x 5, 3/5, 5/5, 5/5 (87%). Canary copies:
# 420 rows, 7% of the 5.8k train rows, so a 10% prune could remove them all. Every canary ranked
# first among 256 and among 1024 references (rank exposure saturates): the skew-normal exposure is
# the one that separates arms; 512 references keep the evaluation near 7 s per arm.
DEFAULT = Config(corpus_bytes=420_000, sample_len=64, n_layer=3, n_head=4, n_embd=128, epochs=9,
                 batch_size=64, lr=3e-3, repetitions=(12, 24, 48), per_count=5, n_references=512,
                 early_epochs=2)

# Candidate correctness rules for carto's ranking, all existing `carto score` options. The paper's
# own rule (the logged token accuracy >= 0.5) is the `paper` arm and is not a candidate.
CANDIDATE_RULES = (
    ("tail", "p25"), ("tail", "p50"), ("tail", "p75"),
    ("loss", "p25"), ("loss", "p50"), ("loss", "p75"),
    ("acc", "p50"), ("acc", "p75"),
)


@dataclass
class SeedData:
    """One seed's rows: planted train rows, held-out validation rows, and the canary record."""

    train: np.ndarray  # (N, sample_len + 1) uint8, index = sample_id
    val: np.ndarray  # (M, sample_len + 1) uint8
    canaries: CanarySet


# ---------------------------------------------------------------------------------- the run


def run_experiment(
    out_dir: str | Path, *, quick: bool, seeds: int, frac: float, progress: Progress | None = None
) -> dict:
    """Run every arm for `seeds` seeds; write results.json, results.md, results.png in `out_dir`."""
    if seeds < 1 or seeds >= DEV_SEED:
        raise OptionError(f"--seeds must be in 1..{DEV_SEED - 1}; got {seeds}")
    export.prune_count(0, frac)  # validates frac
    if frac == 0:
        raise OptionError("--frac must be > 0: with nothing pruned every arm is the baseline")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    cfg = QUICK if quick else DEFAULT
    samples = to_bytes_samples(cpython_text(cfg.corpus_bytes), cfg.sample_len)
    tracker = _Tracker(progress, total=1 + seeds * len(ARMS))
    with _torch_threads(cfg.threads):
        dev = choose_rule(cfg, _prepare(cfg, samples, DEV_SEED), frac, out / "dev", tracker)
        carto_params = _params(cfg, dev["chosen"]["correct_from"], dev["chosen"]["threshold"])
        runs = [run_seed(cfg, _prepare(cfg, samples, s), frac, s, carto_params, out / f"seed{s}", tracker)
                for s in range(seeds)]
    results = _results(cfg, quick, frac, dev, runs)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results))
    plot(results, runs[0], out / "results.png")
    if progress is not None:
        progress("done", tracker.total, tracker.total)
    return results


def choose_rule(cfg: Config, data: SeedData, frac: float, work: Path, tracker: _Tracker) -> dict:
    """Pick carto's correctness rule on a development seed: the candidate whose memorization
    ranking puts the most canary copies among the first `frac` of samples.

    Development canaries, split and initial weights are never reused by the reported seeds, so
    the reported numbers are not tuned to them. Ties go to the earlier candidate.
    """
    _, log_dir = _train_baseline(cfg, data, DEV_SEED, work, tracker.run("development baseline"))
    carriers = data.canaries.carriers
    table = []
    for source, threshold in (("log", None), *CANDIDATE_RULES):
        scores = _score(log_dir, _params(cfg, source, threshold), work / f"scores-{source}-{threshold}.parquet")
        keep = _keep_mask(export.prune_manifest(scores, frac=frac, by="memorization"), len(data.train))
        table.append({"correct_from": source, "threshold": threshold,
                      "canary_recall": float(1 - keep[carriers].mean())})
    best = max(table[1:], key=lambda row: row["canary_recall"])  # max keeps the first of ties
    return {"seed": DEV_SEED, "candidates": table, "chosen": best}


def run_seed(
    cfg: Config, data: SeedData, frac: float, seed: int, carto_params: scoring.ScoreParams,
    work: Path, tracker: _Tracker,
) -> dict:
    """Train and evaluate every arm for one seed; rankings come from the baseline's logs only."""
    n = len(data.train)
    baseline, log_dir = _train_baseline(cfg, data, seed, work, tracker.run(f"seed {seed} · baseline"))
    paper = _score(log_dir, _params(cfg, "log", None), work / "scores-paper.parquet")
    carto = _score(log_dir, carto_params, work / "scores-carto.parquet")
    keeps = {
        "paper": export.prune_manifest(paper, frac=frac, by="memorization"),
        "carto": export.prune_manifest(carto, frac=frac, by="memorization"),
        "random": export.prune_manifest(paper, frac=frac, by="random", seed=seed),
        "loss": export.prune_manifest(paper, frac=frac, by="difficulty"),
    }
    arms = {"baseline": _evaluate(baseline, data, np.ones(n), steps=_steps(cfg, n, cfg.epochs))}
    for name, manifest in keeps.items():
        path = work / f"manifest-{name}.parquet"
        _write(manifest, path, "manifest", {"frac": frac, "arm": name})
        kept = sampling.kept_indices(path, n)
        arms[name] = _train_pruned(cfg, data, kept, seed, tracker.run(f"seed {seed} · {name}"))
    arms["weights"] = _train_weighted(cfg, data, carto, seed, work, tracker.run(f"seed {seed} · weights"))
    oracle = np.setdiff1d(np.arange(n), data.canaries.carriers)
    arms["oracle"] = _train_pruned(cfg, data, oracle.tolist(), seed, tracker.run(f"seed {seed} · oracle"))
    (work / "canaries.json").write_text(json.dumps(data.canaries.to_dict(), indent=1) + "\n")
    return {"seed": seed, "arms": arms, "maps": {"paper": _map(paper), "carto": _map(carto)},
            "carriers": data.canaries.carriers.tolist()}


# ----------------------------------------------------------------------------- the arms


def _prepare(cfg: Config, samples: np.ndarray, seed: int) -> SeedData:
    train, val = train_val_split(samples, cfg.val_frac, seed)
    planted, canaries = plant(train, repetitions=cfg.repetitions, per_count=cfg.per_count,
                              n_references=cfg.n_references, seed=seed)
    return SeedData(planted, val, canaries)


def _train_baseline(cfg: Config, data: SeedData, seed: int, work: Path, on_step: OnStep) -> tuple[GPT, Path]:
    """Train on every row with the CartoLogger on; returns the model and its log directory."""
    log_dir = work / "logs"
    if log_dir.exists():  # a rerun must not mix its presentations with an earlier run's
        shutil.rmtree(log_dir)
    with CartoLogger(log_dir) as logger:
        model = _train(cfg, data.train, epochs=cfg.epochs, seed=seed, logger=logger, on_step=on_step)
    return model, log_dir


def _train_pruned(cfg: Config, data: SeedData, kept: list[int], seed: int, on_step: OnStep) -> dict:
    """Train on the kept rows for as many whole epochs as match the baseline's presentations."""
    n = len(data.train)
    epochs = max(1, round(cfg.epochs * n / max(1, len(kept))))
    model = _train(cfg, data.train[kept], epochs=epochs, seed=seed, on_step=on_step)
    keep = np.zeros(n)
    keep[kept] = 1.0
    return _evaluate(model, data, keep, steps=_steps(cfg, len(kept), epochs))


def _train_weighted(cfg: Config, data: SeedData, scores: pl.DataFrame, seed: int, work: Path, on_step: OnStep) -> dict:
    """Draw epochs * N presentations by carto's weights (with replacement) and train one pass."""
    n = len(data.train)
    path = work / "weights.parquet"
    _write(export.sample_weights(scores), path, "weights", {"multipliers": export.DEFAULT_MULTIPLIERS})
    sampler = sampling.weighted_sampler(path, n, num_samples=cfg.epochs * n,
                                        generator=torch.Generator().manual_seed(seed))
    drawn = np.fromiter(iter(sampler), dtype=np.int64)  # (epochs * N,)
    model = _train(cfg, data.train[drawn], epochs=1, seed=seed, on_step=on_step)
    return _evaluate(model, data, sampling.sample_weight_array(path, n), steps=_steps(cfg, len(drawn), 1))


def _train(cfg: Config, rows: np.ndarray, *, epochs: int, seed: int, logger: CartoLogger | None = None,
           on_step: OnStep = None) -> GPT:
    """A fresh tiny GPT (initial weights fixed by `seed`) trained on `rows`."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=cfg.sample_len, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))
    train_epochs(model, rows, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                 logger=logger, progress=on_step)
    return model


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


def _steps(cfg: Config, rows: int, epochs: int) -> int:
    return epochs * math.ceil(rows / cfg.batch_size)


# ------------------------------------------------------------------------ scores and exports


def _params(cfg: Config, correct_from: str, threshold: str | None) -> scoring.ScoreParams:
    return scoring.ScoreParams(early_epochs=cfg.early_epochs, correct_from=correct_from, threshold=threshold)


def _score(log_dir: Path, params: scoring.ScoreParams, out: Path) -> pl.DataFrame:
    """`carto score LOG_DIR` with `params`: write the scores file, read it back."""
    pipeline.run_score(logs.open_logs([log_dir]), params, out=out, inputs=[str(log_dir)])
    return artifacts.read(out, "scores")[0]


def _write(frame: pl.DataFrame, path: Path, kind: str, parameters: dict) -> None:
    artifacts.write(frame, path, artifacts.provenance(kind, inputs=[], parameters=parameters))


def _keep_mask(manifest: pl.DataFrame, n: int) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[manifest["sample_id"].to_numpy()] = manifest["keep"].to_numpy()
    return keep


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


# ------------------------------------------------------------------------------------ results


def _results(cfg: Config, quick: bool, frac: float, dev: dict, runs: list[dict]) -> dict:
    arms = {}
    for arm in ARMS:
        seeds = [run["arms"][arm] for run in runs]
        summary = {m: summarise([s[m] for s in seeds]) for m in METRICS}
        summary["steps"] = [s["steps"] for s in seeds]
        summary["extraction_by_repetitions"] = _by_repetitions(seeds)
        arms[arm] = summary
    return {
        "carto_version": __version__,
        "quick": quick,
        "frac": frac,
        "seeds": [run["seed"] for run in runs],
        "config": asdict(cfg),
        "carto_rule": dev,
        "arms": arms,
        "per_canary": {arm: [run["arms"][arm]["per_canary"] for run in runs] for arm in ARMS},
    }


def summarise(values: list[float]) -> dict:
    """Per-seed values, their mean, and a 95% Student-t interval over seeds (None for one seed)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"per_seed": values, "mean": mean, "ci95": None}
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    return {"per_seed": values, "mean": mean, "ci95": [mean - half, mean + half]}


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
    dev = results["carto_rule"]
    chosen = dev["chosen"]
    lines = [
        f"# carto experiment: prune {results['frac']:.0%} of the data, then look for the canaries",
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
    lines += [
        (f"`carto` arm: memorization with `--correct-from {chosen['correct_from']} --threshold "
        f"{chosen['threshold']}`, chosen on development seed {dev['seed']} (canary copies among the "
        f"pruned {results['frac']:.0%}: {chosen['canary_recall']:.0%})."),
        "",
        *_table(results["arms"]),
        "",
        ("Cells: mean over seeds [95% Student-t interval]. Exposure by rank is at most log2 of the "
         f"{results['config']['n_references']} references; the skew-normal exposure extrapolates "
         "beyond them. Kept copies: share of each canary's copies left in the training data "
         "(weights arm: their mean weight)."),
        "",
        "Development seed, share of canary copies each memorization ranking prunes:",
        "",
    ]
    lines += [f"- `{row['correct_from']}` {row['threshold'] or ''}: {row['canary_recall']:.0%}"
              for row in dev["candidates"]]
    return "\n".join(lines) + "\n"


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

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for name, arm in results["arms"].items():
        reps = arm["extraction_by_repetitions"]
        axes[0].plot([int(r) for r in reps], list(reps.values()), marker="o", label=name)
    repetitions = results["config"]["repetitions"]
    axes[0].set(xscale="log", xlabel="repetitions of the canary", ylabel="extraction rate",
                title="canary extraction per arm (mean over seeds)", ylim=(-0.05, 1.05))
    axes[0].set_xticks(repetitions, [str(r) for r in repetitions])
    axes[0].minorticks_off()
    axes[0].legend(fontsize=8)
    carriers = np.zeros(len(first_run["maps"]["paper"]["difficulty"]), dtype=bool)
    carriers[first_run["carriers"]] = True
    for ax, name in zip(axes[1:], ("paper", "carto")):
        d = np.array(first_run["maps"][name]["difficulty"], dtype=float)
        m = np.array(first_run["maps"][name]["memorization"], dtype=float)
        ax.scatter(d[~carriers], m[~carriers], s=4, alpha=0.3, label="samples")
        ax.scatter(d[carriers], m[carriers], s=10, color="red", label="canary carriers")
        ax.set(xlabel="difficulty (mean early loss)", ylabel="memorization (forgets / transitions)",
               title=f"baseline data map, {name} rule (seed {first_run['seed']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Tracker:
    """Turns per-step callbacks of each training run into `progress(description, runs done, runs)`."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.started = 0

    def run(self, description: str) -> OnStep:
        index = self.started
        self.started += 1
        if self.progress is None:
            return None
        self.progress(description, index, self.total)
        return lambda step, steps: self.progress(description, index + step / steps, self.total)
