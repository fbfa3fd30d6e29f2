"""The Goldfish loss: leave about 1 token in k out of the loss, chosen by a hash of the h tokens before it.

    from carto_cli.experiment.goldfish import goldfish_loss, row_keep

    batch = data[ids]                          # (B, T + 1) byte rows
    x, y = batch[:, :-1], batch[:, 1:]         # (B, T) each: y is x shifted by one
    keep = row_keep(batch, k=4, h=13, seed=0)  # (B, T) bool over y: False = left out of the loss
    loss = goldfish_loss(model(x), y, keep)    # mean cross-entropy over the kept targets

After Hans et al. 2024, "Be like a Goldfish, Don't Memorize! Mitigating Memorization in Generative
LLMs" (NeurIPS 2024; arXiv 2406.10209), section 3, the hashed mask: token x_i is left out of the loss
when a hash f(x_{i-h}, ..., x_{i-1}) of the h tokens preceding it falls below 1/k (defaults k = 4,
h = 13). Because the decision is a function of the local context only, every copy of a passage, at
any offset in any row, drops the same tokens (after its first h), so no copy ever supervises them
and the model cannot learn the passage verbatim, however often it is repeated.

How this matches the reference code (github.com/ahans30/goldfish-loss, `apply_goldfish` with
strategy "hash-table" in `lit_gpt/utils.py`; called from `chunked_cross_entropy` there and from
`pretrain_umd/train.py`; k = 4, h = 13 as in `launch_scripts/config/tinyllama-1b-equal-supervised-tokens.yaml`):

- Same: the drop rate is 1/k; the decision depends on the last h tokens only; positions with too
  few tokens before them are always kept (the first h - 1 targets of a row, as there); the loss
  divides by the number of kept targets (theirs: `ignore_index` targets, their `sum / max(1, kept)`).
- Different, deliberately: (1) the context. Their windows are `targets.unfold(1, h, 1)` written back
  at `[:, h - 1:]`, so a target's window ends at the target itself (it holds the target and the
  h - 1 targets before it); here the window is the h tokens strictly before the token, as the
  paper's text defines it. Over a row of T + 1 tokens both keep the first h - 1 targets. (2) The hash.
  Theirs is the product of the h token ids modulo 1_000_003, looked up in a table of uniforms drawn
  once by torch from a fixed seed: the product ignores token order, any token 0 sends the window
  to one entry, and int64 overflow wraps. Here a splitmix64 chain runs over the h tokens in order,
  started from `seed`: deterministic, the same on every machine and for every copy of the text,
  order-sensitive, and with no table. The masks therefore differ from theirs token by token; only
  the rate and the rule "same context, same decision" are shared. (3) k = 1 is allowed (every
  token with a full context dropped, a test edge); they require k >= 2.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from carto_cli.errors import OptionError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1, _MUL2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (Steele, Lea and Flood 2014): a bijection of uint64 with full
    avalanche. Arrays only: uint64 array arithmetic wraps silently, as a hash needs."""
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


def _keep(seqs: np.ndarray, k: int, h: int, seed: int) -> np.ndarray:
    """(R, L) token ids -> (R, L) bool keep: token i is dropped iff i >= h and u(seqs[i-h:i]) < 1/k."""
    R, L = seqs.shape
    keep = np.ones((R, L), dtype=bool)
    if L <= h:
        return keep  # no token has h tokens before it
    seqs = seqs.astype(np.uint64)  # the id's value, whatever its dtype (negatives wrap, consistently)
    state = _mix64(np.array([seed % 2**64], dtype=np.uint64) + _GOLDEN)  # (1,), broadcast below
    for j in range(h):  # window of position h + m is seqs[m : m + h]; the loop is over its offsets
        state = _mix64(state ^ seqs[:, j : L - h + j])  # (R, L - h)
    u = (state >> _S11).astype(np.float64) * 2.0**-53  # top 53 bits as a uniform in [0, 1)
    keep[:, h:] = u >= 1.0 / k
    return keep


def goldfish_keep(tokens: np.ndarray | torch.Tensor, *, k: int = 4, h: int = 13, seed: int = 0):
    """True where a token stays in the loss: the Goldfish hashed mask over a token sequence.

    `tokens` (..., L) integer ids, sequences along the last axis. Token i of a sequence is dropped
    iff i >= h and the hash of tokens[i-h : i] (the h tokens strictly before it, in order, mixed
    with `seed`) maps to a uniform below 1/k; tokens 0 .. h-1 are always kept. Returns a bool array
    of the same shape and type (a torch tensor on the input's device; the hash runs in numpy).

    Applied to a model's targets y (B, T), target t's context is y[t-h : t]; where the full rows
    (B, T + 1) are at hand, `row_keep` also uses the row's first token (one more target decided).
    """
    _check(k, h)
    is_torch = isinstance(tokens, torch.Tensor)
    array = tokens.detach().cpu().numpy() if is_torch else np.asarray(tokens)
    if array.ndim == 0 or not np.issubdtype(array.dtype, np.integer):
        raise OptionError(f"goldfish_keep needs integer token ids of shape (..., L), got {array.dtype} "
                          f"of shape {array.shape}; pass token ids, not logits or floats.")
    keep = _keep(array.reshape(-1, array.shape[-1]), k, h, seed).reshape(array.shape)
    return torch.from_numpy(keep).to(tokens.device) if is_torch else keep


def row_keep(rows: np.ndarray | torch.Tensor, *, k: int = 4, h: int = 13, seed: int = 0):
    """The mask over the targets rows[:, 1:] of token rows (N, T + 1): (N, T) bool.

    The same rule over the whole row, so target t (= rows[:, t + 1]) has the context
    rows[:, t + 1 - h : t + 1], the row's first token included; the first h - 1 targets are kept.
    Agrees with `goldfish_keep(rows[:, 1:])` at every target from h on.
    """
    return goldfish_keep(rows, k=k, h=h, seed=seed)[..., 1:]


def goldfish_loss(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean cross-entropy over the kept targets only: sum over kept / number kept (0 if none kept).

    `logits` (B, T, V), `targets` (B, T), `keep` (B, T) bool. Dropped positions take no part, in
    the value or the gradient. With `keep` all True this is F.cross_entropy's mean.
    """
    keep = torch.as_tensor(keep, dtype=torch.bool, device=logits.device)
    if keep.shape != targets.shape or logits.shape[:-1] != targets.shape:
        raise OptionError(f"goldfish_loss needs logits (B, T, V), targets (B, T) and keep (B, T); got "
                          f"{tuple(logits.shape)}, {tuple(targets.shape)} and {tuple(keep.shape)}.")
    total = F.cross_entropy(logits[keep], targets[keep], reduction="sum")  # logits[keep]: (kept, V)
    return total / keep.sum().clamp(min=1)


def _check(k: int, h: int) -> None:
    if int(k) != k or k < 1:
        raise OptionError(f"goldfish k must be an integer >= 1 (about 1 token in k is dropped), got {k!r}.")
    if int(h) != h or h < 1:
        raise OptionError(f"goldfish h must be an integer >= 1 (the tokens hashed before each), got {h!r}.")
