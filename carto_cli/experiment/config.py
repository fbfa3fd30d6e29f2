"""What `carto experiment` runs: its arms, metrics, sizes (`Config`: QUICK for the tests, one per
regime in REGIMES, DEFAULT the reportable run) and the candidate memorization rankings for the
`carto` arm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

# Every arm there is, in the order they run and are reported (`baseline` is always first).
# carto's own: `default` prunes every copy of the private findings of `carto score --data` (whole
# findings, strongest first, at most --frac of the rows), `mask` keeps every row and drops only the
# findings' spans from the loss, `default-half` is `default` at half the fraction. The peers a user
# would pick instead (`peers.py`): `dedup-exact` (ExactSubstr at the paper's L = 50 tokens),
# `dedup-exact-tuned` (ExactSubstr at the L that catches these canaries: their length), `dedup-near`
# (MinHash near-duplicates), `goldfish` (the Goldfish loss on every row) and `goldfish-flagged` (on
# the rows carto flags only). References: `random` (--frac at random), `oracle` (exactly the
# canaries' carriers). Earlier protocols' arms: `paper` (forget events), `signal` (the default
# signal's top --frac, without the findings), `carto` (a ranking chosen on a development seed),
# `loss` (difficulty), `weights` (`carto weights` drawn by a sampler).
ARMS = ("baseline", "default", "mask", "default-half", "random", "oracle", "dedup-exact", "dedup-exact-tuned",
        "dedup-near", "goldfish", "goldfish-flagged", "paper", "signal", "carto", "loss", "weights")
PEER_ARMS = ("dedup-exact", "dedup-exact-tuned", "dedup-near", "goldfish", "goldfish-flagged")
METRICS = ("extraction_rate", "exposure", "exposure_skewnorm", "val_ppl", "val_ppl_final", "mia_auc", "kept_copies",
           "rows_removed", "targets_removed")
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
    arms: tuple[str, ...] = ARMS  # which arms run, baseline first; without `carto` no development seed trains
    device: str = "cpu"  # torch device of training and evaluation ("cuda": `carto experiment --device cuda`)
    # Every arm is evaluated at an exponential moving average of its weights over about the last
    # `ema_frac` of its steps (decay 1 - 1 / (ema_frac * steps)), and at its final weights (val_ppl_final).
    ema_frac: float = 0.05
    # Pruned arms keep the baseline's order of presentations, each pruned row's slot taken by a kept
    # row drawn at random ("paired"), so that two arms differ only where their rows do; "shuffled":
    # each arm draws its own order, as earlier protocols did.
    order: str = "paired"


# A smoke run: every arm end to end, 10-20 s on 2 shared CPU cores (it shows nothing: no canary is
# extracted). One thread: for a model this small thread hand-offs cost more than they save; on a
# loaded 2-core machine two threads made the run 13x slower (257 s against 19 s).
QUICK = Config(corpus_bytes=30_000, sample_len=48, n_layer=1, n_head=2, n_embd=32, epochs=9,
               batch_size=32, lr=1e-2, repetitions=(8, 16), per_count=2, n_references=32, early_epochs=2,
               threads=1)
# The first reportable regime (`--regime small`, docs/experiment.md's 2026-11-28 run): data-starved,
# a random 10% prune costs +0.7% perplexity.
# 25 runs (1 development + 3 seeds x 8 arms; the reported run, before the default arm, had 22)
# of 9 epochs x ~5.8k rows x 64 tokens = 3.3M tokens:
# 35 minutes on this 2-core machine with --jobs 2 (one run ~170-250 s at one thread; the baselines
# also make an evaluation pass per epoch); one run at a time, about 22 x 200 s = 75 minutes (estimated).
# Calibrated on seed 0 (baseline only, the arms untouched): with (8, 16, 32) x 6 canaries the
# baseline extracted 0/6, 4/6, 5/6; with (12, 24, 48) x 5, 3/5, 5/5, 5/5 (87%). Canary copies:
# 420 rows, 7% of the 5.8k train rows, so a 10% prune could remove them all. Every canary ranked
# first among 256 and among 1024 references (rank exposure saturates): the skew-normal exposure is
# the one that separates arms; 512 references keep the evaluation near 7 s per arm.
SMALL = Config(corpus_bytes=420_000, sample_len=64, n_layer=3, n_head=4, n_embd=128, epochs=9,
               batch_size=64, lr=3e-3, repetitions=(12, 24, 48), per_count=5, n_references=512,
               early_epochs=2, arms=("baseline", "paper", "signal", "carto", "random", "loss", "weights", "oracle"))

# The data-rich regime (`--regime data-rich`, the default): closer to pretraining documents and
# data-rich enough that a random 10% prune costs little perplexity. The whole shipped corpus
# (2.4 MB) in 256-byte samples (a 26-byte canary is 10% of its sample): 8,642 train rows, 3
# epochs, a 2-layer d = 96 GPT (0.27M parameters). Calibrated on seed 0 (never reported;
# docs/experiment-results/data-rich-calibration/): at 32/64/128/256 repetitions x 2 the baseline
# extracted 0/2, 0/2, 0/2, 2/2; with 2 epochs nothing at all; with (192, 256) x 2 it extracted
# 4/4, and a random 10% prune cost +0.62% perplexity (4.189 -> 4.215; one seed, so it does not
# separate the prune from the run-to-run spread: the reported seeds measure it). The 3-layer d = 128
# model (signal research's regime B) cost +0.09% but runs 2.3x longer. A first full run on seeds
# 1-3 (aborted: its pruned arms trained 10% fewer steps) showed baselines extracting only 1, 2 and
# 3 of 4 canaries at (192, 256), every canary at 12-21 bits of exposure: the counts were raised to
# (256, 320), and seeds 1-3 are not reported. Canary copies: 1,152 rows, 13.3% of the train rows.
# 18 runs (3 seeds x 6 arms; no development seed: the `carto` arm is left out, the default
# signal needs no choosing). The reported run (these arms and default-half: 21 runs) took 58
# minutes with --jobs 2 on this 2-core machine: two baselines at once 407 s, an arm about 290 s
# while another runs beside it; the 18 runs alone about 51 minutes (estimated from those times).
DATA_RICH = Config(corpus_bytes=2_600_000, sample_len=256, n_layer=2, n_head=4, n_embd=96, epochs=3,
                   batch_size=16, lr=3e-3, repetitions=(256, 320), per_count=2, n_references=512,
                   early_epochs=1, arms=("baseline", "paper", "signal", "random", "weights", "oracle"))
# The GPU regime (`--regime data-rich-gpu`, what `--device cuda` runs by default): the data-rich
# corpus, samples, epochs and canaries with a 12x larger model, 4 layers of d = 256 (3.2M
# parameters), 8 heads, lr 2e-3 (below the small model's 3e-3, as nanoGPT-style recipes lower it
# with width; not calibrated). Runs where a lent GPU is, never in CI; its results live beside the
# CPU ones in docs/experiment-results/data-rich-gpu/. Two torch threads per run: the CPU side of a
# GPU run is small, and several runs share the machine (--jobs).
DATA_RICH_GPU = replace(DATA_RICH, n_layer=4, n_head=8, n_embd=256, lr=2e-3, threads=2, device="cuda")
# The short regime (`--regime short`, the default since the findings and the peers): many canaries
# at lower shares, short samples, so that one seed says more than a few yes/no answers and a
# protocol of five seeds x ten arms fits in about an hour here. 1.46 MB of the corpus in 64-byte
# samples, a fifth held out (4,492 validation rows: a larger validation set than the other regimes,
# for the perplexity half's power), 17,969 train rows; 12 canaries, 4 each at 64, 128 and 192
# copies (1,536 carriers, 8.5% of the train rows: a 10% prune can remove every copy); the
# data-rich regime's model (2 layers, d = 96), 3 epochs. One run is about 90-100 s at one thread.
SHORT = Config(corpus_bytes=1_460_000, sample_len=64, n_layer=2, n_head=4, n_embd=96, epochs=3,
               batch_size=64, lr=3e-3, repetitions=(64, 128, 192), per_count=4, n_references=512,
               early_epochs=1, val_frac=0.2, threads=1,
               arms=("baseline", "default", "mask", "random", "oracle", *PEER_ARMS))
REGIMES = {"short": SHORT, "data-rich": DATA_RICH, "small": SMALL, "data-rich-gpu": DATA_RICH_GPU}
DEFAULT = SHORT

# Candidate memorization rankings for the `carto` arm, all existing `carto score` options:
# (memorization signal, --correct-from, --threshold). The paper's own ranking (forget events with the
# logged correctness, token accuracy >= 0.5) is the `paper` arm; it is compared but not a candidate.
PAPER_RANKING = ("forgets", "log", None)
# `carto score` at its defaults: the `default` arm (extractable, from the shim's default sketch).
DEFAULT_RANKING = ("auto", "log", None)
CANDIDATES = (
    ("forgets", "tail", "p25"), ("forgets", "tail", "p50"), ("forgets", "tail", "p75"),
    ("forgets", "loss", "p25"), ("forgets", "loss", "p50"), ("forgets", "loss", "p75"),
    ("forgets", "acc", "p50"), ("forgets", "acc", "p75"),
    ("token-drop", "log", None), ("tail-var", "log", None), ("extractable", "log", None),
)
RANKINGS = (PAPER_RANKING, *CANDIDATES)


def ranking_name(ranking: tuple[str, str, str | None]) -> str:
    """How a ranking is named in results: its `carto score` options."""
    signal, source, threshold = ranking
    if signal == "auto":
        return "(defaults)"
    if signal != "forgets":
        return f"--memorization {signal}"
    if source == "log":
        return "--correct-from log"
    return f"--correct-from {source} --threshold {threshold}"
