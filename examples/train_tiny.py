"""A minimal training script instrumented with carto, for `carto log`.

    carto log -- python examples/train_tiny.py --epochs 3

Trains a tiny byte-level GPT on CPython's own documentation text (offline, PSF License) and records
every sample's loss and correctness with `CartoLogger()`, which writes to $CARTO_LOG_DIR (set by
`carto log`). About ten seconds on a 2-core CPU.
"""

from __future__ import annotations

import argparse

import torch

from carto_cli import CartoLogger
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples
from carto_cli.experiment.tinygpt import GPT, GPTConfig, train_epochs


def main() -> None:
    ap = argparse.ArgumentParser(description="Train a tiny GPT with per-sample carto logging.")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    samples = to_bytes_samples(cpython_text(args.samples * 65), 64)[: args.samples]  # (N, 65)
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64))
    with CartoLogger() as log:
        stats = train_epochs(model, samples, epochs=args.epochs, batch_size=16, lr=3e-3, seed=args.seed, logger=log)
    print(f"trained {stats['steps']} steps, final train loss {stats['final_train_loss']:.3f}")


if __name__ == "__main__":
    main()
