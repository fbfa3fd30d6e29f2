"""The arms of the mitigations a user would reach for instead of carto, each from its paper, on the
same seed's rows, budget and order as carto's arms.

    from carto_cli.experiment.peers import peer_run
    run = peer_run("dedup-exact", cfg, data, seed, findings_scores, "seed 0 · dedup-exact")

- `dedup-exact`: ExactSubstr (Lee et al. 2022, "Deduplicating Training Data Makes Language Models
  Better", ACL): every span of at least L = 50 tokens that occurs earlier in the corpus is cut out
  of the text, the rest packed into rows again (`dedup.exact_substr_mask`, `dedup.repack`).
- `dedup-exact-tuned`: the same at the L a user tuning it for these canaries would pick: the
  canary's length in tokens (26 bytes here), the longest L that still catches a copy. It knows
  the canaries' length, which a user does not know of the strings a model memorizes.
- `dedup-near`: NearDup (the same paper): rows whose 5-gram sets have Jaccard >= 0.8 (MinHash)
  are one cluster, every row but the first of a cluster removed (`dedup.near_duplicate_rows`).
- `goldfish`: the Goldfish loss (Hans et al. 2024, "Be like a Goldfish, Don't Memorize!",
  NeurIPS) at the paper's k = 4, h = 13: one target in four dropped from the loss, chosen by a
  hash of the 13 tokens before it, on every row (`goldfish.row_keep`).
- `goldfish-flagged`: the same on the rows carto flags only (the carriers of a private finding).

Deduplicated text is trained at the same budget of presentations, epochs over its own rows (its
order cannot be the baseline's: its rows are new). Loss-masked arms keep the baseline's rows and
order exactly, so they differ from it only in the targets they drop.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carto_cli.experiment import dedup, goldfish
from carto_cli.experiment.arms import Run, SeedData, loss_masked_run, pruned_run
from carto_cli.experiment.canaries import canary_text
from carto_cli.experiment.config import Config

PAPER_MIN_LEN = 50  # Lee et al. 2022's threshold for ExactSubstr, in tokens (bytes here)
GOLDFISH_K, GOLDFISH_H = 4, 13  # Hans et al. 2024's defaults
NEAR_NGRAM, NEAR_THRESHOLD = 5, 0.8  # Lee et al. 2022's NearDup: 5-grams, Jaccard >= 0.8


def peer_run(name: str, cfg: Config, data: SeedData, seed: int, scores: pl.DataFrame, label: str) -> Run:
    """The run of one peer arm. `scores`: the baseline's scores with findings (goldfish-flagged)."""
    if name == "dedup-exact":
        return exact_substr_run(cfg, data, seed, PAPER_MIN_LEN, label)
    if name == "dedup-exact-tuned":
        return exact_substr_run(cfg, data, seed, tuned_min_len(data), label)
    if name == "dedup-near":
        removed = dedup.near_duplicate_rows(data.train, ngram=NEAR_NGRAM, threshold=NEAR_THRESHOLD, seed=seed)
        return pruned_run(cfg, data, np.flatnonzero(~removed), seed, label)
    if name == "goldfish":
        return loss_masked_run(cfg, data, seed, goldfish.row_keep(data.train, k=GOLDFISH_K, h=GOLDFISH_H), label)
    if name == "goldfish-flagged":
        flagged = scores.filter(pl.col("finding").is_not_null())["sample_id"].to_numpy()
        keep = np.ones((len(data.train), cfg.sample_len), dtype=bool)
        if len(flagged):
            keep[flagged] = goldfish.row_keep(data.train[flagged], k=GOLDFISH_K, h=GOLDFISH_H)
        return loss_masked_run(cfg, data, seed, keep, label)
    raise ValueError(f"not a peer arm: {name}")


def tuned_min_len(data: SeedData) -> int:
    """ExactSubstr's L tuned for the canaries: the length of a canary's text, in tokens."""
    return min(len(canary_text(c.key, c.secret).encode()) for c in data.canaries.canaries)


def exact_substr_run(cfg: Config, data: SeedData, seed: int, min_len: int, label: str) -> Run:
    """The rows with every later copy of a repeated span of >= `min_len` tokens cut out, packed
    again into rows of the same width, trained for the baseline's presentations (epochs * N)."""
    n, width = data.train.shape
    removed = dedup.exact_substr_mask(data.train, min_len)  # (N, T + 1)
    packed = dedup.repack(data.train, removed, width)  # (M, T + 1)
    budget = cfg.epochs * n
    rng = np.random.default_rng([seed, 2])
    m = len(packed)
    order = np.concatenate([rng.permutation(m) for _ in range(-(-budget // max(1, m)))])[:budget]
    return Run(label, cfg, data, seed, np.arange(m), -(-budget // max(1, m)), secrets_kept(data, removed),
               order=order, train_rows=packed, rows_removed=n - m, targets_removed=int(removed.sum()))


def secrets_kept(data: SeedData, removed: np.ndarray) -> np.ndarray:
    """(N,) 1 for each row, 0 for a canary's copy with any token of its secret cut out (`removed`
    (N, T + 1) over row tokens): for kept_copies, which copies deduplication left whole."""
    share = np.ones(len(data.train))
    for row, start, length in data.canaries.secret_spans():
        if removed[row, start : start + length].any():
            share[row] = 0.0
    return share
