"""Lightning training logged with carto's callback: `training_step` returns the ids and logits.

    python examples/lightning_train.py --out runs/lightning
    python examples/lightning_train.py --out runs/lightning-ddp --devices 2     # DDP on 2 CPU processes

A tiny next-token model (an embedding and a linear layer, about 600 parameters) on generated token
sequences: most count up by one (easy), some are random (hard). `CartoCallback` logs every sample
of every micro-batch; under DDP it leaves out the samples the distributed sampler repeats to even
out the ranks. CPU, a few seconds (DDP: Lightning starts the second process itself).
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from carto_cli.integrations.distributed import IndexedDataset
from carto_cli.integrations.lightning import CartoCallback

VOCAB, LENGTH = 16, 12


def make_data(n: int, seed: int) -> torch.Tensor:
    """(n, LENGTH) token ids: three in four count up by one from a random start, the rest are random."""
    g = torch.Generator().manual_seed(seed)
    counting = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(LENGTH)) % VOCAB
    noise = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    return torch.where((torch.arange(n) % 4 == 3)[:, None], noise, counting)


class TinyLM(lightning.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        ids, x = batch  # (B,), (B, LENGTH)
        logits = self.head(self.embed(x[:, :-1]))  # (B, T, V): position t predicts x[:, t + 1]
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        return {"loss": loss, "carto_ids": ids, "carto_logits": logits.detach(), "carto_labels": x[:, 1:]}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def main() -> None:
    ap = argparse.ArgumentParser(description="Lightning training with the carto callback.")
    ap.add_argument("--out", required=True, help="log directory (each rank writes its own parts there)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=45)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--devices", type=int, default=1, help="CPU processes; above 1: strategy='ddp' (gloo)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    lightning.seed_everything(args.seed, verbose=False)

    data = IndexedDataset(make_data(args.samples, args.seed))  # items: (sample_id, (LENGTH,) tokens)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
    trainer = lightning.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        accumulate_grad_batches=args.accumulate,
        callbacks=[CartoCallback(log_dir=args.out)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyLM(), loader)
    if trainer.is_global_zero:
        print(f"logged {trainer.world_size} rank(s) into {args.out}; next:")
        print(f"  carto logs summary {args.out}")
        print(f"  carto score {args.out} --out scores.parquet")
        print("  carto map --scores scores.parquet --out map.png")


if __name__ == "__main__":
    main()
