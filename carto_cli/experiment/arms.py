"""What each arm of the experiment trains: one seed's rows, and each arm's `Run` (which rows, in
which order, for how many presentations, and each row's share for `kept_copies`).

    from carto_cli.experiment.arms import arm_runs, baseline_run, prepare_seed

    data = prepare_seed(cfg, samples, seed)             # split, canaries planted
    base = baseline_run(cfg, data, seed, work)           # every row, logged
    runs = arm_runs(cfg, data, frac, seed, scored, work)  # the other arms, from the baseline's scores

Training (`training.train_and_evaluate`) reads a `Run` and nothing else, so an arm that changes how
its rows train (a loss mask, a Goldfish loss, deduplicated rows) is a field of `Run` and a case of
`arm_runs`. Every arm trains the baseline's budget of E * N presentations (see `pruned_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from carto_cli.experiment.canaries import CanarySet, plant
from carto_cli.experiment.config import DEV_SEED, Config
from carto_cli.experiment.corpus import train_val_split
from carto_cli.export import manifests as export
from carto_cli.export import sampling
from carto_cli.io import artifacts

# The pruning arms: (the scores they rank, the share of `frac` pruned, the prune order). The shares
# are powers of two, so `frac * share` is exact (default-half prunes exactly frac / 2).
PRUNES = {"paper": ("paper", 1.0, "memorization"), "default": ("default", 1.0, "memorization"),
          "default-half": ("default", 0.5, "memorization"), "carto": ("carto", 1.0, "memorization"),
          "random": ("paper", 1.0, "random"), "loss": ("paper", 1.0, "difficulty")}


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


def prepare_seed(cfg: Config, samples: np.ndarray, seed: int) -> SeedData:
    """The seed's train/validation split of `samples`, with its own canaries planted in the train rows."""
    train, val = train_val_split(samples, cfg.val_frac, seed)
    planted, canaries = plant(train, repetitions=cfg.repetitions, per_count=cfg.per_count,
                              n_references=cfg.n_references, seed=seed)
    return SeedData(planted, val, canaries)


def baseline_run(cfg: Config, data: SeedData, seed: int, work: Path, out: Path | None = None) -> Run:
    """Every row, `cfg.epochs` epochs, logged (with per-token losses) to work/logs; after each
    epoch an evaluation pass over every row (no update) is logged to work/eval_logs."""
    n = len(data.train)
    label = "development baseline" if seed == DEV_SEED else f"seed {seed} · baseline"
    return Run(label, cfg, data, seed, np.arange(n), cfg.epochs, np.ones(n), log_dir=work / "logs",
               eval_log_dir=work / "eval_logs", out_dir=out)


def arm_runs(cfg: Config, data: SeedData, frac: float, seed: int, scored: dict[str, pl.DataFrame],
             work: Path) -> list[Run]:
    """The runs of every arm after the baseline, in `cfg.arms` order. `scored` holds the baseline's
    scores by ranking name (paper, default, and carto where that arm runs); the manifests and the
    weights file each arm draws from are written to `work`, with their provenance."""
    n = len(data.train)
    runs = []
    for name in cfg.arms[1:]:
        if name == "weights":
            runs.append(weighted_run(cfg, data, scored["default"], seed, work))
        elif name == "oracle":  # exactly the rows without a canary: an upper bound, not a method
            oracle = np.setdiff1d(np.arange(n), data.canaries.carriers)
            runs.append(pruned_run(cfg, data, oracle, seed, f"seed {seed} · oracle"))
        else:
            source, share, by = PRUNES[name]
            path = work / f"manifest-{name}.parquet"
            manifest = export.prune_manifest(scored[source], frac=frac * share, by=by, seed=seed)
            write_export(manifest, path, "manifest", {"frac": frac * share, "arm": name})
            runs.append(pruned_run(cfg, data, np.array(sampling.kept_indices(path, n)), seed,
                                   f"seed {seed} · {name}"))
    return runs


def pruned_run(cfg: Config, data: SeedData, kept: np.ndarray, seed: int, label: str) -> Run:
    """The kept rows for exactly the baseline's presentations, epochs * N: whole epochs over the
    kept rows, the last one cut short (3 epochs over 90% of the rows is 3 full epochs and a third)."""
    n = len(data.train)
    keep = np.zeros(n)
    keep[kept] = 1.0
    budget = cfg.epochs * n
    return Run(label, cfg, data, seed, kept, -(-budget // max(1, len(kept))), keep, presentations=budget)


def weighted_run(cfg: Config, data: SeedData, scores: pl.DataFrame, seed: int, work: Path) -> Run:
    """epochs * N presentations drawn by carto's weights (with replacement), trained in one pass."""
    n = len(data.train)
    path = work / "weights.parquet"
    write_export(export.sample_weights(scores), path, "weights", {"multipliers": export.DEFAULT_MULTIPLIERS})
    sampler = sampling.weighted_sampler(path, n, num_samples=cfg.epochs * n,
                                        generator=torch.Generator().manual_seed(seed))
    drawn = np.fromiter(iter(sampler), dtype=np.int64)  # (epochs * N,)
    return Run(f"seed {seed} · weights", cfg, data, seed, drawn, 1, sampling.sample_weight_array(path, n))


def write_export(frame: pl.DataFrame, path: Path, kind: str, parameters: dict) -> None:
    """A manifest or weights file as `carto prune` / `carto weights` write it (with provenance)."""
    artifacts.write(frame, path, artifacts.provenance(kind, inputs=[], parameters=parameters))
