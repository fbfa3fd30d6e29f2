"""Train one baseline with carto's own pieces and keep, for every presentation, the per-position
token losses (float16) and greedy hits (bool), so every candidate signal is computed offline from
the same run.

    PYTHONPATH=/work/wt-signal python proto/train_record.py --regime A --seed 1000 --out proto/out/A-1000
    ... --regime B [--prune-random 0.1]   # a random-90% run with the same number of presentations

Writes OUT/record.npz (loss[E, N, T] f16, hit[E, N, T] bool, step[E, N] int32 indexed by epoch and
sample_id: each epoch presents each row exactly once), OUT/meta.json (config, timings, val loss,
extraction per canary, carriers).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

torch.set_num_threads(1)

from carto_cli.experiment import metrics  # noqa: E402
from carto_cli.experiment.arms import prepare_seed  # noqa: E402
from carto_cli.experiment.config import SMALL, Config  # noqa: E402
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples  # noqa: E402
from carto_cli.experiment.tinygpt import GPT, GPTConfig, eval_loss, train_epochs  # noqa: E402

# Regime B: data-rich. The whole shipped corpus (0.47 MB topics + 2 MB stdlib source), 256-byte
# samples (a canary, 26 bytes, is ~10% of one), few epochs, few carriers.
REGIME_B = Config(
    corpus_bytes=2_600_000,
    sample_len=256,
    n_layer=3,
    n_head=4,
    n_embd=128,
    epochs=3,
    batch_size=32,
    lr=3e-3,
    repetitions=(16, 32, 64),
    per_count=4,
    n_references=64,
    early_epochs=1,
    threads=1,
)


class Recorder:
    """A stand-in for CartoLogger: train_epochs calls record(ids, epoch, step, logits, labels)."""

    def __init__(self, epochs: int, n: int, t: int) -> None:
        self.loss = np.full((epochs, n, t), np.nan, dtype=np.float16)
        self.hit = np.zeros((epochs, n, t), dtype=bool)
        self.step = np.full((epochs, n), -1, dtype=np.int32)

    @torch.no_grad()
    def record(self, ids, *, epoch, step, logits, labels) -> None:
        ids = np.asarray(ids)
        lg = logits.detach().float()
        tok = F.cross_entropy(lg.transpose(1, 2), labels, reduction="none")  # (B, T)
        self.loss[epoch, ids] = tok.numpy().astype(np.float16)
        self.hit[epoch, ids] = (lg.argmax(-1) == labels).numpy()
        self.step[epoch, ids] = step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--regime", choices=["A", "B"], required=True)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--corpus-bytes", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--repetitions", type=lambda v: tuple(int(x) for x in v.split(",")))
    ap.add_argument("--per-count", type=int)
    ap.add_argument(
        "--prune-random",
        type=float,
        default=0.0,
        help="train on a random (1-f) of the rows for the same number of presentations",
    )
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    cfg = SMALL if args.regime == "A" else REGIME_B
    over = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("lr", args.lr),
            ("n_embd", args.n_embd),
            ("n_layer", args.n_layer),
            ("corpus_bytes", args.corpus_bytes),
            ("batch_size", args.batch_size),
            ("repetitions", args.repetitions),
            ("per_count", args.per_count),
        )
        if v is not None
    }
    cfg = replace(cfg, **over)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    samples = to_bytes_samples(cpython_text(cfg.corpus_bytes), cfg.sample_len)
    data = prepare_seed(cfg, samples, args.seed)
    n = len(data.train)
    rows = np.arange(n)
    epochs = cfg.epochs
    if args.prune_random > 0:
        rng = np.random.default_rng(args.seed + 7)
        kept = np.sort(rng.permutation(n)[: n - round(args.prune_random * n)])
        rows = kept
        # same number of presentations: whole epochs as in experiment._pruned_run, plus the rest
        # of the budget as a partial epoch is not possible with train_epochs: use epochs such that
        # epochs * kept ~= cfg.epochs * n by training on a tiled row list (one "epoch" = the tiling)
        total = cfg.epochs * n
        reps = total // len(kept)
        extra = total - reps * len(kept)
        rng2 = np.random.default_rng(args.seed + 8)
        tiled = [rng2.permutation(kept) for _ in range(reps)] + [rng2.permutation(kept)[:extra]]
        rows = np.concatenate(tiled)
        epochs = 1
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(block_size=cfg.sample_len, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))
    rec = None if (args.no_record or args.prune_random > 0) else Recorder(epochs, n, cfg.sample_len)
    t0 = time.perf_counter()

    def progress(step: int, total: int) -> None:
        if step % 100 == 0 or step == total:
            now = time.perf_counter()
            print(f"step {step}/{total} {now - t0:.0f}s", flush=True)

    stats = train_epochs(
        model,
        data.train[rows],
        epochs=epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=args.seed,
        logger=_Remap(rec, rows) if rec is not None else None,
        progress=progress,
    )
    train_s = time.perf_counter() - t0
    cs = data.canaries
    prefixes = [c.prefix for c in cs.canaries]
    secrets = [c.secret for c in cs.canaries]
    extracted = metrics.extraction_successes(model, prefixes, secrets)
    canary_lp = metrics.secret_log_perplexity(model, prefixes, secrets)
    val = eval_loss(model, data.val)
    meta = {
        "regime": args.regime,
        "seed": args.seed,
        "config": asdict(cfg),
        "prune_random": args.prune_random,
        "n_train": int(n),
        "n_val": int(len(data.val)),
        "params": model.num_params(),
        "presentations": int(len(rows) * epochs),
        "train_seconds": train_s,
        "stats": stats,
        "val_loss": val,
        "val_ppl": math.exp(val),
        "extraction_rate": float(extracted.mean()),
        "canaries": [
            {
                "key": c.key,
                "secret": c.secret,
                "repetitions": c.repetitions,
                "sample_ids": list(c.sample_ids),
                "offsets": list(c.offsets),
                "extracted": bool(e),
                "log_perplexity_bits": float(lp),
            }
            for c, e, lp in zip(cs.canaries, extracted, canary_lp)
        ],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=float) + "\n")
    if rec is not None:
        np.savez(out / "record.npz", loss=rec.loss, hit=rec.hit, step=rec.step)
    by_r: dict[int, list[bool]] = {}
    for c in meta["canaries"]:
        by_r.setdefault(c["repetitions"], []).append(c["extracted"])
    print(
        json.dumps(
            {
                "train_s": round(train_s),
                "val_loss": val,
                "val_ppl": math.exp(val),
                "extraction": meta["extraction_rate"],
                "by_reps": {r: f"{sum(v)}/{len(v)}" for r, v in by_r.items()},
                "n_train": n,
                "params": meta["params"],
            }
        )
    )


class _Remap:
    """Passes train_epochs' batch indices (into the rows it was given) on as sample_ids."""

    def __init__(self, rec: Recorder, rows: np.ndarray) -> None:
        self.rec, self.rows = rec, rows

    def record(self, ids, **kw) -> None:
        self.rec.record(self.rows[np.asarray(ids)], **kw)


if __name__ == "__main__":
    main()
