"""Whether CartoTrainer scores `logits[:, t]` against `labels[:, t + 1]` (the label shift), decided
from what the model computes.

A causal LM is given labels equal to its inputs and shifts them inside its loss (transformers'
`ForCausalLMLoss`: the logits at position t predict token t + 1); a seq2seq decoder, a masked LM or
a token classifier scores `labels[:, t]` at position t. Logging the other one scores every sample
against the wrong tokens without a word (a subclass of `GPT2LMHeadModel`, or a Llava, logged
unshifted: a mean loss of 3.869 where the model's own was 4.117). So the shift is decided once, at
the first logged batch of each `train()`, by `decide`:

1. `carto_shift_labels=` when given: it always wins.
2. Else the model's own `loss`, when the forward returned one (the model was given the labels):
   the batch's token-mean cross-entropy is computed from the same logits and labels both ways
   (`check_loss`), and the shift whose value agrees with the model's loss is taken.
3. Else the model's class (`class_shifts`): a causal-LM or image-text-to-text class of
   transformers' auto mappings anywhere in its MRO (so subclasses count), unless its config is an
   encoder-decoder's (Pix2Struct, Florence-2, VisionEncoderDecoder score their decoder's labels
   as given). This decides when the model gets no labels (label smoothing and
   `compute_loss_func` take them away from it), when its loss agrees with neither shift, and when
   it agrees with both.

**Agreement.** transformers' losses (`ForCausalLMLoss`, `ForMaskedLMLoss`, the seq2seq ones) are
`cross_entropy(logits.float(), labels, ignore_index=-100)` summed, then divided by the number of
targets, or, when the Trainer passes `num_items_in_batch` (the model takes loss kwargs: gradient
accumulation, tokens averaged over ranks), by that: the targets of the whole optimizer step, over
every rank when `average_tokens_across_devices`. Both denominators are tried for both shifts.
The values come from the very logits tensor the model's loss was computed from, upcast to fp32 as
the model does, so the matching one differs only by the order of the sums (fp32 rounding, growing
with log2 of the number of targets in torch's pairwise sums; the tests assert agreement to 1e-5).
`RTOL` = 1e-4 leaves room for that and stays far under the gap between the two shifts, the
difference between predicting the next token and the current one (the issue's run: 3.869 logged
unshifted against the model's 4.117). A batch on which both shifts agree to 1e-4 cannot tell
them apart: the class decides, and nothing is reported.

**Disagreement is a warning, not an error.** A model's loss may legitimately be more than the
token cross-entropy (the router's auxiliary loss mixture-of-experts models add with
`output_router_logits=True`, a z-loss, a loss weighted inside the model), and an error would stop a
training that the class rule logs right. `LabelShiftWarning` is one line naming both values, the
model's loss, the shift chosen, and `carto_shift_labels=`, which silences it: given explicitly,
carto warns only when the model's loss agrees with the other shift.

**Cost.** The check computes the first batch's cross-entropy twice more (fp32 chunks of at most
the logger's `chunk_bytes`) and reads five or six numbers from the device: one host-device
synchronisation, at the first logged batch of each `train()`. After it, the decision is a Python bool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)

RTOL = 1e-4  # relative tolerance between the model's loss and carto's (see the module docstring)
_SHIFTING_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) | frozenset(
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())


class LabelShiftWarning(UserWarning):
    """The label shift CartoTrainer logs with is not the one the model's own loss uses."""


def class_shifts(model: Any) -> bool:
    """Whether the model's class says causal LM: a class of transformers' causal-LM or
    image-text-to-text auto mapping in its MRO (by name), and not an encoder-decoder."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    return any(cls.__name__ in _SHIFTING_CLASSES for cls in type(model).__mro__)


@dataclass(frozen=True)
class LossCheck:
    """The model's loss on one batch and carto's token-mean cross-entropy of the same batch, shifted
    and unshifted: for each, the sum over targets divided by their number, and by the Trainer's
    `num_items_in_batch` when it passed one (NaN where a denominator is 0)."""

    model_loss: float
    shifted: tuple[float, ...]
    unshifted: tuple[float, ...]

    def agrees(self, shift: bool) -> bool:
        return any(_close(value, self.model_loss) for value in (self.shifted if shift else self.unshifted))

    def nearest(self, shift: bool) -> float:
        """The value of that shift closest to the model's loss (the one to show)."""
        values = self.shifted if shift else self.unshifted
        return min(values, key=lambda v: abs(v - self.model_loss) if not math.isnan(v) else math.inf)

    @property
    def verdict(self) -> bool | None:
        """The shift the model's loss agrees with; None when it agrees with both or neither."""
        shifted, unshifted = self.agrees(True), self.agrees(False)
        return shifted if shifted != unshifted else None


def _close(value: float, reference: float) -> bool:
    return abs(value - reference) <= RTOL * max(abs(value), abs(reference))  # False with a NaN


def _sum_and_count(logits: Any, labels: Any, ignore_index: int, chunk_bytes: int) -> tuple[Any, Any]:
    """Sum of the token cross-entropies (fp32, as the model's loss) and number of targets of
    (B, T, V) logits against (B, T) labels, as 0-d fp32 tensors on the logits' device (fp32, not
    fp64, which MPS lacks: its rounding, 1e-7 relative, is far under RTOL)."""
    B, T, V = logits.shape
    rows = max(1, chunk_bytes // max(1, T * V * 4))
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    for lo in range(0, B, rows):
        chunk = logits[lo:lo + rows].detach().float()  # (b, T, V): at most chunk_bytes
        total += torch.nn.functional.cross_entropy(chunk.reshape(-1, V), labels[lo:lo + rows].reshape(-1),
                                                   ignore_index=ignore_index, reduction="sum")
    return total, (labels != ignore_index).sum().float()


def check_loss(logits: Any, labels: Any, model_loss: Any, num_items_in_batch: Any = None, *,
               ignore_index: int = -100, chunk_bytes: int = 256 * 2**20) -> LossCheck | None:
    """Compare the model's `loss` of a batch with carto's shifted and unshifted token means of its
    (B, T, V) `logits` and (B, T) `labels`. None when there is nothing to compare: no scalar loss
    (the model was not given the labels), logits and labels that do not line up (record says why),
    a batch without targets or a loss that is not finite. One host-device synchronisation."""
    if not torch.is_tensor(model_loss) or model_loss.numel() != 1:
        return None
    if logits.dim() != 3 or labels.dim() != 2 or tuple(logits.shape[:2]) != tuple(labels.shape) or labels.shape[1] < 2:
        return None
    with torch.no_grad():
        labels = labels.to(logits.device).long()
        values = [*_sum_and_count(logits[:, :-1], labels[:, 1:], ignore_index, chunk_bytes),
                  *_sum_and_count(logits, labels, ignore_index, chunk_bytes),
                  model_loss.detach().to(logits.device, torch.float32).reshape(())]
        items = _scalar(num_items_in_batch)
        if torch.is_tensor(items):
            values.append(items.to(logits.device, torch.float32).reshape(()))
        read = torch.stack(values).tolist()  # the synchronisation
    shifted_sum, shifted_n, plain_sum, plain_n, loss = read[:5]
    if not math.isfinite(loss) or not (shifted_n or plain_n):  # a batch without targets tells nothing
        return None
    denominators = [read[5]] if len(read) > 5 else [float(items)] if items is not None else []

    def candidates(total: float, count: float) -> tuple[float, ...]:
        return tuple(total / d if d else math.nan for d in (count, *denominators))

    return LossCheck(loss, candidates(shifted_sum, shifted_n), candidates(plain_sum, plain_n))


def _scalar(value: Any) -> Any:
    """`num_items_in_batch` as the Trainer passes it (a 0-d tensor or an int), else None (DataParallel's
    per-device copies: not compared)."""
    if torch.is_tensor(value):
        return value if value.numel() == 1 else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ShiftDecision:
    """The shift CartoTrainer logs with, what decided it, and the warning to give (None: none)."""

    shift: bool
    source: str  # "carto_shift_labels", "model loss" or "model class"
    warning: str | None = None


def _name(shift: bool) -> str:
    return "shifted" if shift else "unshifted"


def decide(*, explicit: bool | None, check: LossCheck | None, model: Any) -> ShiftDecision:
    """The label shift for `model` (the unwrapped model: its class is the fallback), from the
    explicit choice, the first batch's `check_loss` and the class, by the module docstring's rule."""
    verdict = check.verdict if check is not None else None
    if explicit is not None:
        warning = None
        if verdict is not None and verdict != explicit:
            warning = (f"CartoTrainer: carto_shift_labels={explicit} but the model's loss {check.model_loss:.6g} is "
                       f"the {_name(verdict)} token-mean cross-entropy of its logits ({check.nearest(verdict):.6g}; "
                       f"{_name(explicit)}: {check.nearest(explicit):.6g}); logging {_name(explicit)} as asked; "
                       f"remove carto_shift_labels= to log what the model computes")
        return ShiftDecision(explicit, "carto_shift_labels", warning)
    if verdict is not None:
        return ShiftDecision(verdict, "model loss")
    shift = class_shifts(model)
    warning = None
    if check is not None and not check.agrees(True) and not check.agrees(False):
        warning = (f"CartoTrainer: the model's loss {check.model_loss:.6g} agrees with neither the shifted "
                   f"({check.nearest(True):.6g}, logits[:, t] against labels[:, t + 1]) nor the unshifted "
                   f"({check.nearest(False):.6g}) token-mean cross-entropy of its logits; logging {_name(shift)}, "
                   f"as the model's class {type(model).__name__} suggests; pass carto_shift_labels=True or False "
                   "to say which (and silence this)")
    return ShiftDecision(shift, "model class", warning)
