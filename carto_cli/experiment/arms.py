"""What each arm of the experiment trains: one seed's rows, and each arm's `Run` (which rows, in
which order, for how many presentations, and each row's share for `kept_copies`).

    from carto_cli.experiment.arms import arm_runs, baseline_run, prepare_seed

    data = prepare_seed(cfg, samples, seed)             # split, canaries planted
    base = baseline_run(cfg, data, seed, work)           # every row, logged
    runs = arm_runs(cfg, data, frac, seed, scored, findings, work)  # the other arms, from its scores

Training (`training.train_and_evaluate`) reads a `Run` and nothing else, so an arm that changes how
its rows train (a loss mask, a Goldfish loss, deduplicated rows) is a field of `Run` and a case of
`arm_runs` (the peers' arms are `peers.py`'s). Every arm trains the baseline's budget of E * N
presentations, in the baseline's order where it keeps the rows (see `pruned_run`).
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
from carto_cli.export import masks, sampling
from carto_cli.io import artifacts

# The pruning arms ranked by a scores file: (the scores they rank, the share of `frac` pruned, the
# prune order). The shares are powers of two, so `frac * share` is exact (default-half prunes exactly
# frac / 2). `default` and `default-half` prune by findings instead (`findings_manifest`).
PRUNES = {"paper": ("paper", 1.0, "memorization"), "signal": ("default", 1.0, "memorization"),
          "carto": ("carto", 1.0, "memorization"), "random": ("paper", 1.0, "random"),
          "loss": ("paper", 1.0, "difficulty")}
FINDINGS_PRUNES = {"default": 1.0, "default-half": 0.5}


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
    order: np.ndarray | None = None  # the presentations in turn, positions in `rows` (paired arms)
    target_keep: np.ndarray | None = None  # (len(rows), T) bool: the targets the loss keeps (a loss mask)
    train_rows: np.ndarray | None = None  # rows to train on instead of data.train[rows] (deduplicated text)
    rows_removed: int = 0  # train rows the arm removed
    targets_removed: int = 0  # target tokens the arm removed from training (with its rows, or from the loss)
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
    return Run(label, cfg, data, seed, np.arange(n), cfg.epochs, np.ones(n), order=baseline_order(cfg, n, seed),
               log_dir=work / "logs", eval_log_dir=work / "eval_logs", out_dir=out)


def baseline_order(cfg: Config, n: int, seed: int) -> np.ndarray | None:
    """The baseline's presentations, epochs * N row indices: a permutation of the rows per epoch,
    drawn from the seed; None where arms draw their own orders (`cfg.order` "shuffled")."""
    if cfg.order != "paired":
        return None
    rng = np.random.default_rng([seed, 0])
    return np.concatenate([rng.permutation(n) for _ in range(cfg.epochs)]) if n else np.zeros(0, dtype=np.int64)


def arm_runs(cfg: Config, data: SeedData, frac: float, seed: int, scored: dict[str, pl.DataFrame],
             findings: pl.DataFrame | None, work: Path) -> list[Run]:
    """The runs of every arm after the baseline, in `cfg.arms` order. `scored` holds the baseline's
    scores by ranking name (paper, default, findings, and carto where that arm runs), `findings` the
    findings file of `carto score --data` on the baseline's logs; the manifests, masks and the
    weights file each arm draws from are written to `work`, with their provenance."""
    from carto_cli.experiment import peers  # the peers' arms (dedup, goldfish) build on these

    n = len(data.train)
    runs = []
    for name in cfg.arms[1:]:
        label = f"seed {seed} · {name}"
        if name == "weights":
            runs.append(weighted_run(cfg, data, scored["default"], seed, work))
        elif name == "oracle":  # exactly the rows without a canary: an upper bound, not a method
            runs.append(pruned_run(cfg, data, np.setdiff1d(np.arange(n), data.canaries.carriers), seed, label))
        elif name in FINDINGS_PRUNES:  # every copy of the strongest private findings, at most frac * share
            path = work / f"manifest-{name}.parquet"
            manifest = export.findings_manifest(scored["findings"], frac=frac * FINDINGS_PRUNES[name])
            write_export(manifest, path, "manifest", {"frac": frac * FINDINGS_PRUNES[name], "arm": name})
            runs.append(pruned_run(cfg, data, np.array(sampling.kept_indices(path, n)), seed, label))
        elif name == "mask":
            runs.append(masked_run(cfg, data, findings, seed, work, label))
        elif name in PRUNES:
            source, share, by = PRUNES[name]
            path = work / f"manifest-{name}.parquet"
            manifest = export.prune_manifest(scored[source], frac=frac * share, by=by, seed=seed)
            write_export(manifest, path, "manifest", {"frac": frac * share, "arm": name})
            runs.append(pruned_run(cfg, data, np.array(sampling.kept_indices(path, n)), seed, label))
        else:
            runs.append(peers.peer_run(name, cfg, data, seed, scored["findings"], label))
    return runs


def pruned_run(cfg: Config, data: SeedData, kept: np.ndarray, seed: int, label: str) -> Run:
    """The kept rows for exactly the baseline's presentations, epochs * N.

    Paired (`cfg.order`): the baseline's order, each pruned row's presentation given to a kept row
    drawn at random, so the arm's batches are the baseline's wherever its rows are. Shuffled: whole
    epochs over the kept rows, the last one cut short (3 epochs over 90% of the rows is 3 full
    epochs and a third)."""
    n = len(data.train)
    keep = np.zeros(n)
    keep[kept] = 1.0
    removed = n - len(kept)
    budget = cfg.epochs * n
    order = baseline_order(cfg, n, seed)
    if order is None:
        return Run(label, cfg, data, seed, kept, -(-budget // max(1, len(kept))), keep, presentations=budget,
                   rows_removed=removed, targets_removed=removed * cfg.sample_len)
    order = order.copy()
    slots = keep[order] == 0
    order[slots] = np.random.default_rng([seed, 1]).choice(kept, size=int(slots.sum()))
    return Run(label, cfg, data, seed, np.arange(n), cfg.epochs, keep, order=order, rows_removed=removed,
               targets_removed=removed * cfg.sample_len)


def masked_run(cfg: Config, data: SeedData, findings: pl.DataFrame, seed: int, work: Path, label: str) -> Run:
    """Every row in the baseline's order, with every copy of every private finding dropped from the
    loss (`carto mask`'s spans, written to work/mask.parquet): the model reads them, never learns
    to produce them."""
    spans = masks.mask_spans(findings)
    write_export(spans, work / "mask.parquet", "mask", {"arm": "mask", "include_public": False})
    keep = np.ones((len(data.train), cfg.sample_len), dtype=bool)  # (N, T): target t is row token t + 1
    for sample_id, start, length in spans.select("sample_id", "start", "length").iter_rows():
        keep[sample_id, max(0, start - 1) : max(0, start - 1 + length)] = False
    return loss_masked_run(cfg, data, seed, keep, label)


def loss_masked_run(cfg: Config, data: SeedData, seed: int, keep: np.ndarray, label: str) -> Run:
    """Every row in the baseline's order, the loss over the targets `keep` (N, T) holds only."""
    n = len(data.train)
    return Run(label, cfg, data, seed, np.arange(n), cfg.epochs, copies_taught(data, keep),
               order=baseline_order(cfg, n, seed), target_keep=keep, targets_removed=int((~keep).sum()))


def copies_taught(data: SeedData, keep: np.ndarray) -> np.ndarray:
    """(N,) 1 for each row, 0 for a canary's copy whose every secret token is dropped from the loss
    (`keep` (N, T), target t = row token t + 1): for kept_copies, what a loss mask leaves taught."""
    share = np.ones(len(data.train))
    for row, start, length in data.canaries.secret_spans():
        if not keep[row, start - 1 : start - 1 + length].any():  # target t is row token t + 1
            share[row] = 0.0
    return share


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
