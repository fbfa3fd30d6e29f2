"""What the forward `compute_loss` ran returned, as captured by CartoTrainer's forward hook.

Either a ModelOutput (or dict, or tuple-like object) with `logits`, logged through
`CartoLogger.record(logits=...)`, or a fused LM head's per-token values (TRL's `SFTTrainer` since
1.x: `log_probs`, `is_top1` and `label_mask`, no logits), reduced here to the per-sample columns
`record` takes: loss, token accuracy, tail loss and token count, without the memorization sketch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from carto_cli.errors import OptionError


def field(outputs: Any, name: str) -> Any:
    """`outputs[name]` of a dict-like output, else its attribute; None when absent."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def is_fused(outputs: Any) -> bool:
    """A fused-LM-head output (TRL's FusedCausalLMOutput): per-token log-probs instead of logits."""
    return all(field(outputs, name) is not None for name in ("log_probs", "label_mask"))


def fused_columns(outputs: Any, tail_k: int) -> dict[str, Any]:
    """Per-sample loss, token accuracy, tail loss and token count from per-token `log_probs`,
    `is_top1` and `label_mask` (B, T), with the definitions of `CartoLogger.record(logits=...)`."""
    is_top1 = field(outputs, "is_top1")
    if is_top1 is None:
        raise OptionError(
            "CartoTrainer: the model's fused LM head returns no `is_top1`, so token accuracy is unknown; "
            "add the head with outputs=(..., 'is_top1') or train without it"
        )
    with torch.no_grad():
        valid = field(outputs, "label_mask").bool()  # (B, T)
        tok_loss = (-field(outputs, "log_probs").detach().float()).masked_fill(~valid, 0.0)  # (B, T)
        n_tok = valid.sum(dim=1)
        n = n_tok.float()
        k = min(tail_k, tok_loss.shape[1])
        return {
            "loss": tok_loss.sum(dim=1) / n,  # NaN where no target, as with logits
            "token_acc": (is_top1.bool() & valid).sum(dim=1).float() / n,
            "tail_loss": tok_loss.topk(k, dim=1).values.sum(dim=1) / n.clamp(max=k),
            "n_tokens": n_tok.int(),
        }


def batch_mismatch(what: str, rows: int, samples: int) -> OptionError:
    """The error for outputs with another number of rows than the batch has samples (packed rows)."""
    return OptionError(
        f"CartoTrainer: the model's {what} have {rows} rows but the batch has {samples} samples; carto logs "
        "one row per sample, so packing (TRL packing=True, padding_free) and DataCollatorWithFlattening, "
        "which put several samples in one row, cannot be logged: turn them off"
    )
