"""The shim's Triton kernels on CUDA: per-token loss and greedy hit of large logits in one read,
and the memorization sketch of those in one launch.

The shim's logits path needs, per target position, the cross-entropy loss and whether the greedy
prediction is the target. With PyTorch ops that is an fp32 copy of the logits, a log-softmax that
writes another tensor of that size, and an argmax: on an H200, 4.2 ms more per training step of a
110M-parameter model (42.0 against 46.2 ms) for 16 x 1024 tokens of a 32,000-word vocabulary in
bf16 (docs/device-results/shim3_torch.txt; with this kernel 42.6 ms, shim3_triton.txt). This
kernel reads each row of logits once, in its own dtype, and keeps everything else in registers: a
running maximum and a rescaled sum of exponentials in fp32 (the log-sum-exp an fp32 log-softmax
computes, in another summation order), the first index of the largest logit (as `torch.argmax`),
and the target's logit.

`token_stats` returns None where it does not apply (no CUDA tensor, a vocabulary below `MIN_VOCAB`,
no Triton, or `CARTO_NO_TRITON=1`); the shim then uses the PyTorch ops. Below `MIN_VOCAB` those are
cheap and the kernel's launch costs more host time than it saves (measured on an H200 with a
256-word vocabulary: 1.02 against 0.77 ms per `record`, docs/device-results/shim3_triton.txt and
shim3_torch.txt). The kernel is checked against a float64 reference on a GPU by
`benchmarks/bench_shim.py --device cuda`, and on the CPU by the tests, through Triton's interpreter
(the CI machines have no GPU).

`sketch_stats` computes the memorization sketch (`carto_cli.log.sketch`) from those per-token
losses and hits in one program per sample, positions relative to each sample's first target as
`sketch.sketch` logs them. The PyTorch version is about 30 small kernels (two top-k, a cumulative
maximum and their masks) whose launches cost about 1 ms of host time per `record` (measured on an
H200 at 16 x 1,024 tokens: 1.96 against 0.92 ms per `record` with and without the sketch,
docs/device-results/shim-sketch-torch-ops.txt; 1.50 ms with this kernel, shim-sketch-kernel.txt,
both before positions were made relative to the first target); the device work is tiny, so one
launch is what it should cost. Same outputs as the PyTorch version, except that among exactly equal
losses the kernel keeps the earliest positions (torch.topk promises no order there). Used on CUDA
with Triton for any vocabulary, up to `MAX_SKETCH_T` positions (the whole row sits in registers);
else the PyTorch ops.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

from carto_cli.errors import first_line

MIN_VOCAB = 4096
MAX_SKETCH_T = 16384
# The kernels of carto_cli.log.triton_kernels by name, loaded on first use; False where Triton is
# missing or the kernel failed once (the PyTorch ops from then on).
_KERNELS: dict[str, Any] = {}


def _load(name: str) -> Any:
    """The Triton kernel `name`, or None where Triton is missing or the kernel failed before."""
    if name not in _KERNELS:
        try:
            _KERNELS[name] = getattr(importlib.import_module("carto_cli.log.triton_kernels"), name)
        except ImportError:
            _KERNELS[name] = False
    return _KERNELS[name] or None


def _launched(name: str, what: str, launch_with: Any) -> Any:
    """`launch_with(kernel)` for the kernel `name`, or None where it is missing; where it fails
    (Triton could not compile or launch here: no C compiler, an old GPU, ...), one warning and None,
    and the kernel is not tried again: the training loop must not fail over logging."""
    kernel = _load(name)
    if kernel is None:
        return None
    try:
        return launch_with(kernel)
    except Exception as exc:
        _KERNELS[name] = False
        warnings.warn(f"carto: the {what} failed ({first_line(exc)}); using PyTorch ops instead "
                      "(set CARTO_NO_TRITON=1 to skip it)", RuntimeWarning, stacklevel=4)
        return None


def token_stats(torch: Any, logits: Any, labels: Any, ignore_index: int) -> tuple[Any, Any] | None:
    """(loss, hit) of shape (B, T) from logits (B, T, V) and int64 labels (B, T) on CUDA: the loss
    in fp32, 0 where there is no target; hit True where the greedy prediction is the target. None
    where the kernel does not apply."""
    if not logits.is_cuda or logits.shape[-1] < MIN_VOCAB or os.environ.get("CARTO_NO_TRITON") == "1":
        return None
    return _launched("token_stats_kernel", "fused logits kernel",
                     lambda kernel: launch(torch, kernel, logits, labels, ignore_index))


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


def sketch_stats(torch: Any, tok_loss: Any, tok_hit: Any, valid: Any, k: int, r: int) -> tuple[Any, Any, Any] | None:
    """(top_pos int32 (B, k), top_loss float16 (B, k), hit_runs int32 (B, 2r)) of `sketch.sketch` (positions
    relative to each row's first target) from (B, T) per-token losses, hits and valid flags on CUDA, in one launch.
    None where the kernel does not apply (no CUDA tensor, more than `MAX_SKETCH_T` positions, no
    Triton, or `CARTO_NO_TRITON=1`): the caller then uses the PyTorch ops."""
    if not tok_loss.is_cuda or tok_loss.shape[1] > MAX_SKETCH_T or os.environ.get("CARTO_NO_TRITON") == "1":
        return None
    return _launched("sketch_kernel", "sketch kernel",
                     lambda kernel: launch_sketch(torch, kernel, tok_loss, tok_hit, valid, k, r))


def launch_sketch(torch: Any, kernel: Any, tok_loss: Any, tok_hit: Any, valid: Any, k: int, r: int
                  ) -> tuple[Any, Any, Any]:
    """Run the sketch kernel: one program per sample (the tests run it through Triton's interpreter)."""
    B, T = tok_loss.shape
    top_pos = torch.empty((B, k), dtype=torch.int32, device=tok_loss.device)
    top_loss = torch.empty((B, k), dtype=torch.float16, device=tok_loss.device)
    runs = torch.empty((B, 2 * r), dtype=torch.int32, device=tok_loss.device)
    if B and T:
        block = max(16, 1 << (T - 1).bit_length())  # the next power of two
        kernel[(B,)](tok_loss.float().contiguous(), tok_hit.contiguous().view(torch.uint8),
                     valid.contiguous().view(torch.uint8), top_pos, top_loss, runs, T,
                     K=k, R=r, BLOCK=block, num_warps=4 if block <= 2048 else 8)
    elif B:  # no positions: the padding of carto_cli.log.sketch
        top_pos.zero_(), top_loss.fill_(float("nan")), runs.zero_()
    return top_pos, top_loss, runs
