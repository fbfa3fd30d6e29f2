"""Data-parallel training logged with carto: torchrun + DDP, or Accelerate, each rank its own parts.

    torchrun --nproc_per_node=2 examples/torchrun_train.py --out runs/ddp
    torchrun --nproc_per_node=2 examples/torchrun_train.py --out runs/acc --accelerate
    python examples/torchrun_train.py --out runs/one                     # one process works too

A tiny next-token model (an embedding and a linear layer, about 600 parameters) on generated token
sequences: most count up by one (easy), some are random (hard). 45 samples in batches of 8 over 2
ranks: the last round of each epoch is padded with repeated samples, which `batch_keep_mask` leaves
out, so every sample is logged once per epoch. CPU (gloo), a few seconds.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from carto_cli import CartoLogger
from carto_cli.integrations.distributed import IndexedDataset, batch_keep_mask

VOCAB, LENGTH = 16, 12


def make_data(n: int, seed: int) -> torch.Tensor:
    """(n, LENGTH) token ids: three in four count up by one from a random start, the rest are random."""
    g = torch.Generator().manual_seed(seed)
    counting = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(LENGTH)) % VOCAB
    noise = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    return torch.where((torch.arange(n) % 4 == 3)[:, None], noise, counting)


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, T, V)


def train_ddp(args: argparse.Namespace, data: IndexedDataset) -> None:
    """torchrun: torch.distributed + DistributedDataParallel + DistributedSampler."""
    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    model = TinyLM()
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    step = 0
    with CartoLogger(args.out) as log:  # rank from torch.distributed
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            for i, (ids, x) in enumerate(loader):
                logits = model(x[:, :-1])  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
                log.record(ids, epoch=epoch, step=step, logits=logits, labels=x[:, 1:],
                           keep=batch_keep_mask(loader, i, len(ids)))  # padding duplicates: False
                step += 1
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print_next_steps(args.out, world)


def train_accelerate(args: argparse.Namespace, data: IndexedDataset) -> None:
    """Accelerate: `prepare` shards the loader (whole batches round robin, the last round padded)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    model, opt, loader = accelerator.prepare(model, opt, loader)
    step = 0
    with CartoLogger(args.out, rank=accelerator.process_index) as log:
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            for i, (ids, x) in enumerate(loader):
                logits = model(x[:, :-1])  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
                opt.zero_grad()
                accelerator.backward(loss)
                opt.step()
                log.record(ids, epoch=epoch, step=step, logits=logits, labels=x[:, 1:],
                           keep=batch_keep_mask(loader, i, len(ids)))  # Accelerate's repeats: False
                step += 1
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print_next_steps(args.out, accelerator.num_processes)
    accelerator.end_training()


def print_next_steps(out: str, world: int) -> None:
    print(f"logged {world} rank(s) into {out}; next:")
    print(f"  carto logs summary {out}")
    print(f"  carto score {out} --out scores.parquet")
    print("  carto map --scores scores.parquet --out map.png")


def main() -> None:
    ap = argparse.ArgumentParser(description="Data-parallel training (torchrun or Accelerate) with carto logging.")
    ap.add_argument("--out", required=True, help="log directory (each rank writes its own parts there)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=45)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accelerate", action="store_true", help="shard with Accelerate instead of DistributedSampler")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    data = IndexedDataset(make_data(args.samples, args.seed))  # items: (sample_id, (LENGTH,) tokens)
    (train_accelerate if args.accelerate else train_ddp)(args, data)


if __name__ == "__main__":
    main()
