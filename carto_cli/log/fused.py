"""Per-token loss and greedy hit of large logits in one read, on CUDA, with a Triton kernel.

The shim's logits path needs, per target position, the cross-entropy loss and whether the greedy
prediction is the target. With PyTorch ops that is an fp32 copy of the logits, a log-softmax that
writes another tensor of that size, and an argmax: on an H200, about 4 ms for 16 x 1024 tokens of a
32,000-word vocabulary in bf16, a tenth of a 110M-parameter model's training step. This kernel reads
each row of logits once, in its own dtype, and keeps everything else in registers: a running
maximum and a rescaled sum of exponentials in fp32 (the log-sum-exp an fp32 log-softmax computes,
in another summation order), the first index of the largest logit (as `torch.argmax`), and the
target's logit.

`token_stats` returns None where it does not apply (no CUDA tensor, a vocabulary below `MIN_VOCAB`,
no Triton, or `CARTO_NO_TRITON=1`); the shim then uses the PyTorch ops. Below `MIN_VOCAB` those are
cheap and the kernel's launch costs more host time than it saves (measured on an H200 with a
256-word vocabulary: 1.02 against 0.77 ms per `record`). The kernel is checked against a float64
reference on a GPU by `benchmarks/bench_shim.py --device cuda`, and on the CPU by the tests, through
Triton's interpreter (the CI machines have no GPU).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from carto_cli.errors import first_line

MIN_VOCAB = 4096
_KERNEL = None


def _kernel():
    """The compiled kernel, or None where Triton is missing."""
    global _KERNEL
    if _KERNEL is None:
        try:
            import triton
            import triton.language as tl
        except ImportError:
            _KERNEL = False
            return None

        @triton.jit
        def token_stats_kernel(logits, labels, loss_out, hit_out, n_vocab, row_stride, ignore_index,
                               BLOCK: tl.constexpr):
            row = tl.program_id(0)
            base = logits + row.to(tl.int64) * row_stride
            label = tl.load(labels + row)
            running_max = tl.full((), float("-inf"), tl.float32)
            running_sum = tl.full((), 0.0, tl.float32)
            best = tl.full((), float("-inf"), tl.float32)
            best_index = tl.full((), 0, tl.int64)
            for start in range(0, n_vocab, BLOCK):
                offsets = start + tl.arange(0, BLOCK)
                x = tl.load(base + offsets, mask=offsets < n_vocab, other=float("-inf")).to(tl.float32)
                block_max = tl.max(x, axis=0)
                block_index = tl.argmax(x, axis=0).to(tl.int64) + start
                best_index = tl.where(block_max > best, block_index, best_index)  # ties: the first
                best = tl.maximum(best, block_max)
                new_max = tl.maximum(running_max, block_max)
                running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
                running_max = new_max
            has_target = label != ignore_index
            # a label outside [0, V) would make cross_entropy fail; here it must not read out of bounds
            target = tl.minimum(tl.maximum(tl.where(has_target, label, 0), 0), n_vocab - 1)
            target_logit = tl.load(base + target).to(tl.float32)
            loss = running_max + tl.log(running_sum) - target_logit
            tl.store(loss_out + row, tl.where(has_target, loss, 0.0))
            tl.store(hit_out + row, (has_target & (best_index == label)).to(tl.uint8))

        _KERNEL = token_stats_kernel
    return _KERNEL or None


def token_stats(torch: Any, logits: Any, labels: Any, ignore_index: int) -> tuple[Any, Any] | None:
    """(loss, hit) of shape (B, T) from logits (B, T, V) and int64 labels (B, T) on CUDA: the loss
    in fp32, 0 where there is no target; hit True where the greedy prediction is the target. None
    where the kernel does not apply."""
    if not logits.is_cuda or logits.shape[-1] < MIN_VOCAB or os.environ.get("CARTO_NO_TRITON") == "1":
        return None
    kernel = _kernel()
    if kernel is None:
        return None
    try:
        return launch(torch, kernel, logits, labels, ignore_index)
    except Exception as exc:  # Triton could not compile or launch here (no C compiler, an old GPU, ...)
        global _KERNEL
        _KERNEL = False  # the PyTorch ops from now on: the training loop must not fail over logging
        warnings.warn(f"carto: the fused logits kernel failed ({first_line(exc)}); using PyTorch ops instead "
                      "(set CARTO_NO_TRITON=1 to skip it)", RuntimeWarning, stacklevel=3)
        return None


def launch(torch: Any, kernel: Any, logits: Any, labels: Any, ignore_index: int) -> tuple[Any, Any]:
    """Run the kernel: one program per (sample, position). The tests run it on the CPU through
    Triton's interpreter (TRITON_INTERPRET=1), which executes the same kernel code."""
    B, T, V = logits.shape
    rows = logits.reshape(-1, V)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    flat_labels = labels.reshape(-1).contiguous()
    loss = torch.empty(B * T, dtype=torch.float32, device=logits.device)
    hit = torch.empty(B * T, dtype=torch.uint8, device=logits.device)
    if B * T:
        kernel[(B * T,)](rows, flat_labels, loss, hit, V, rows.stride(0), ignore_index, BLOCK=2048, num_warps=8)
    return loss.view(B, T), hit.view(torch.bool).view(B, T)
