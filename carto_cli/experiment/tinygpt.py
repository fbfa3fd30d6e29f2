"""A tiny GPT: a causal byte-level language model and its training loop, in plain PyTorch.

    from carto_cli.experiment.tinygpt import GPT, GPTConfig, train_epochs

    model = GPT(GPTConfig(block_size=128, n_layer=2, n_head=4, n_embd=64))
    with CartoLogger("logs/") as log:
        stats = train_epochs(model, samples, epochs=6, batch_size=32, lr=3e-3, seed=0, logger=log)

The model follows karpathy/nanoGPT `model.py` (https://github.com/karpathy/nanoGPT), itself GPT-2
(Radford et al., 2019, "Language Models are Unsupervised Multitask Learners"): token + learned
position embeddings, pre-LayerNorm blocks of causal self-attention and a 4x MLP, a final LayerNorm
and an output head tied to the token embedding. It exists to produce real training dynamics for
carto (sample logs, tests, examples), not to be a good language model. Needs torch (the extra).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from carto_cli.log.shim import CartoLogger


@dataclass
class GPTConfig:
    vocab_size: int = 256  # bytes
    block_size: int = 128  # longest context the model sees
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf, 2017)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: std 0.02 / sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Number of parameters (the tied embedding / head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for `idx` (B, T): logits[:, t] scores the byte after idx[:, t]."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(
                f"input of length {T} is longer than block_size {self.config.block_size}"
            )
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    @torch.no_grad()
    def generate_greedy(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Extend `idx` (B, T) by `max_new_tokens` argmax bytes; returns (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]  # (B, <= block_size)
            logits = self(context)[:, -1, :]  # (B, V): the next byte only
            idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)  # (B, T + 1)
        return idx


# ---------------------------------------------------------------------------- training


def train_epochs(
    model: GPT,
    train_samples: np.ndarray | torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    logger: CartoLogger | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_epoch_end: Callable[[int, int], None] | None = None,
    presentations: int | None = None,
    order: np.ndarray | None = None,
    target_keep: np.ndarray | None = None,
    after_step: Callable[[], None] | None = None,
    weight_decay: float = 0.1,
    warmup_frac: float = 0.05,
    min_lr_frac: float = 0.1,
    grad_clip: float = 1.0,
) -> dict[str, float]:
    """Train `model` on `train_samples` (N, T + 1) byte rows for `epochs` full passes with AdamW.

    Each epoch presents every row exactly once, in an order drawn from a torch.Generator seeded with
    `seed` (the last batch may be short). A row's index in `train_samples` is its sample_id. The
    learning rate warms up linearly over the first `warmup_frac` of the steps, then follows a cosine
    down to `min_lr_frac * lr` (as in nanoGPT's `train.py`).

    With `logger` (a `CartoLogger`), every step records its samples with the logits of the training
    forward pass itself, before the update: no extra forward. `progress(step, total)` is called
    after each step (step counts from 1), `on_epoch_end(epoch, steps so far)` after each epoch
    (e.g. for an evaluation pass; it must leave the model in training mode). With `presentations`
    (at most epochs * N), training stops after that many: the last epoch presents only the first
    rows of its order, so a budget need not be a whole number of epochs.

    `order` (presentations,) fixes the order instead: row indices, presented in turn, an epoch being
    each N of them (the experiment's paired arms; `epochs` and `presentations` are then ignored).
    `target_keep` (N, T) bool drops the targets where it is False from the loss (a loss mask: the
    Goldfish loss, carto's mask); the loss is the mean over the kept targets, and the logger still
    records every target. `after_step()` runs after each optimizer step (an average of the weights).
    Returns steps, final_train_loss (mean over the last epoch's presentations), seconds and tokens_per_s.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    device = next(model.parameters()).device
    data = torch.as_tensor(train_samples, dtype=torch.long, device="cpu")  # (N, T + 1)
    n = data.shape[0]
    keep = None if target_keep is None else torch.as_tensor(target_keep, dtype=torch.bool)  # (N, T)
    if order is not None:
        order = torch.as_tensor(np.asarray(order), dtype=torch.long)
        if len(order) and not (0 <= int(order.min()) and int(order.max()) < n):
            raise ValueError(f"order holds row indices outside [0, {n})")
        epochs, presentations = -(-len(order) // n) if n else 0, len(order)
    budget = epochs * n if presentations is None else presentations
    if not 0 <= budget <= epochs * n:
        raise ValueError(f"presentations must be in [0, epochs * N = {epochs * n}]; got {presentations}")
    total_steps = count_steps(n, batch_size, budget)
    optimizer = _adamw(model, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    warmup = max(1, round(warmup_frac * total_steps))

    model.train()
    step = 0
    tokens = 0
    epoch_loss = torch.zeros((), device=device)
    t0 = time.perf_counter()
    seen = 0  # presentations in the last epoch
    for epoch in range(epochs):
        seen = min(n, budget - epoch * n)
        if seen <= 0:
            break
        epoch_loss.zero_()
        epoch_order = (torch.randperm(n, generator=generator)[:seen] if order is None
                       else order[epoch * n : epoch * n + seen])  # (seen,)
        for lo in range(0, seen, batch_size):
            ids = epoch_order[lo : lo + batch_size]  # (B,) the batch's sample_ids
            batch = data[ids].to(device, non_blocking=True)  # (B, T + 1)
            x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each: y is x shifted by one
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup, lr, min_lr_frac)
            logits = model(x)  # (B, T, V)
            if keep is None:
                loss = _token_loss(logits, y)
            else:  # the mean over the kept targets only (0 where a batch keeps none)
                kept = keep[ids].to(device)  # (B, T)
                loss = _token_loss(logits, y.masked_fill(~kept, -100), reduction="sum") / kept.sum().clamp(min=1)
            if logger is not None:
                logger.record(ids, epoch=epoch, step=step, logits=logits, labels=y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step()
            epoch_loss += loss.detach() * len(ids)
            tokens += y.numel()
            step += 1
            if progress is not None:
                progress(step, total_steps)
        if on_epoch_end is not None:
            on_epoch_end(epoch, step)
    seconds = time.perf_counter() - t0
    return {
        "steps": step,
        "final_train_loss": (epoch_loss / seen).item() if seen > 0 else float("nan"),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
    }


def count_steps(n: int, batch_size: int, presentations: int) -> int:
    """Optimizer steps for `presentations` of `n` rows in epochs of ceil(n / batch_size) batches,
    the last epoch cut short where the budget ends."""
    full, rest = divmod(presentations, n) if n else (0, 0)
    return full * math.ceil(n / batch_size) + math.ceil(rest / batch_size)


@torch.no_grad()
def eval_loss(model: GPT, samples: np.ndarray | torch.Tensor, *, batch_size: int = 256) -> float:
    """Mean token cross-entropy (nats) of `model` on byte rows `samples` (N, T + 1)."""
    device = next(model.parameters()).device
    data = torch.as_tensor(samples, dtype=torch.long, device="cpu")  # (N, T + 1)
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for lo in range(0, data.shape[0], batch_size):
        batch = data[lo : lo + batch_size].to(device)  # (B, T + 1)
        logits = model(batch[:, :-1])  # (B, T, V)
        total += _token_loss(logits, batch[:, 1:], reduction="sum")
    model.train(was_training)
    return (total / max(1, data[:, 1:].numel())).item()


@torch.no_grad()
def row_losses(model: GPT, samples: np.ndarray | torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """Each row's mean token cross-entropy (nats), (N,), of `model` on byte rows `samples` (N, T + 1):
    the per-row figures behind a paired comparison of two models on the same rows."""
    device = next(model.parameters()).device
    data = torch.as_tensor(samples, dtype=torch.long, device="cpu")  # (N, T + 1)
    was_training = model.training
    model.eval()
    out = []
    for lo in range(0, data.shape[0], batch_size):
        batch = data[lo : lo + batch_size].to(device)  # (B, T + 1)
        logits = model(batch[:, :-1])  # (B, T, V)
        nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (B, T)
        out.append(nll.mean(dim=1).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


def _token_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T), over every target that is not -100."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction, ignore_index=-100
    )


def _lr_at(step: int, total_steps: int, warmup: int, lr: float, min_lr_frac: float) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_lr_frac * lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # 1 -> 0
    return lr * (min_lr_frac + (1.0 - min_lr_frac) * coeff)


def _adamw(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, weight decay on matrices only (not on biases or LayerNorm gains), as in nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
