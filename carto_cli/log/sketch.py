"""A fixed-size sketch of one presentation's token losses and greedy hits, for the memorization signal.

Full per-token losses cost 2 bytes per position per presentation; the sketch costs the same
whatever the sequence length (k = 10, r = 6: 64 bytes before compression, positions below 65,536):

- `top_pos`, `top_loss` (k each): the positions of the k largest token losses among the target
  positions, largest first, and those losses (float16). A sample with fewer than k targets pads
  with position 0 and loss NaN.
- `hit_runs` (2r): the r longest runs of consecutive greedy hits among target positions, longest
  first (ties: the earlier run first), as start, length pairs; padded with (0, 0). Under teacher
  forcing a run of greedy hits is exactly what greedy decoding reproduces from the run's true
  prefix, so a run is an extractable span (Carlini et al. 2021; Biderman et al. 2023's
  memorization score counts the same hits on a fixed 32-token continuation).

**Positions are relative to the sample's first target** (`sketch`, and what the shim logs): a logged
position p is the row position p + f, where f is the first position of the row whose label is not
`ignore_index`. Padding (left or right, of any length, changing from epoch to epoch as dynamic
padding does) and a masked prompt before the first target move f and the targets together, so the
same sample logs the same positions however it was padded; the scorer compares positions within one
sample only. A sample without targets has nothing to shift and keeps the padding values. Parts say
so in their metadata (`carto.positions` = `first-target`); older parts, without the key, hold row
positions (see `carto_cli.log.schema`). `top_losses` and `hit_runs` give row positions unless told
the origin.

The scorer (`carto_cli.score.signals`, `extractable`) combines them: how much of the loss a
sample's tokens had early in training the model now reproduces verbatim. All of it is computed on
the logits' device from the per-token losses and hits the shim already has, with a top-k, a
cumulative maximum and an argmax: no host-device synchronisation.
"""

from __future__ import annotations

from typing import Any

DEFAULT_TOP_K = 10
DEFAULT_RUNS = 6


def sketch(torch: Any, tok_loss: Any, tok_hit: Any, valid: Any, k: int, r: int) -> tuple[Any, Any, Any]:
    """(top_pos int32 (B, k), top_loss float16 (B, k), hit_runs int32 (B, 2r)) as the shim logs them:
    positions relative to each sample's first target (`first_target`)."""
    first = first_target(torch, valid)
    return (*top_losses(torch, tok_loss, valid, k, origin=first), hit_runs(torch, tok_hit, valid, r, origin=first))


def first_target(torch: Any, valid: Any) -> Any:
    """(B,) int64: the first position of each row where `valid` (B, T) is True; 0 for a row without one
    (whose sketch holds no position to shift). One argmax, which returns the first of equal maxima."""
    return valid.to(torch.uint8).argmax(dim=1)


def from_first_target(torch: Any, tok_loss: Any, valid: Any) -> Any:
    """(B, T) float16: each row's per-position losses moved left so that column j is the row's
    position first_target + j (the `token_loss` column, positions as the sketch's); NaN where that
    position has no target or lies past the row's end. A gather: no host-device synchronisation."""
    B, T = tok_loss.shape
    index = first_target(torch, valid).unsqueeze(1) + torch.arange(T, device=tok_loss.device)  # (B, T)
    inside = index < T
    index = index.clamp(max=T - 1)
    kept = valid.gather(1, index) & inside
    return tok_loss.gather(1, index).masked_fill(~kept, float("nan")).half()


def top_losses(torch: Any, tok_loss: Any, valid: Any, k: int, origin: Any = None) -> tuple[Any, Any]:
    """(positions int32 (B, k), losses float16 (B, k)) of the k largest losses at valid positions.

    `tok_loss` (B, T) float, `valid` (B, T) bool. With fewer than k valid positions the rest are
    (0, NaN); with T < k the sketch is padded to k the same way. `origin` (B,): subtracted from each
    position found (None: row positions).
    """
    B, T = tok_loss.shape
    width = min(k, T)
    masked = tok_loss.float().masked_fill(~valid, float("-inf"))
    # (B, width), largest first; torch.topk promises no order among exactly equal losses (nor which of
    # them makes the cut at k); exact float ties are rare in real token losses
    values, positions = masked.topk(width, dim=1)
    missing = values == float("-inf")
    if origin is not None:
        positions = positions - origin.unsqueeze(1)  # >= 0: a valid position is at or after the first
    positions = positions.masked_fill(missing, 0).int()
    losses = values.masked_fill(missing, float("nan")).half()
    if width < k:  # a sequence shorter than k
        positions = torch.nn.functional.pad(positions, (0, k - width), value=0)
        losses = torch.nn.functional.pad(losses, (0, k - width), value=float("nan"))
    return positions, losses


def hit_runs(torch: Any, tok_hit: Any, valid: Any, r: int, origin: Any = None) -> Any:
    """(B, 2r) int32: start and length of the r longest runs of greedy hits at valid positions.

    A run is a maximal stretch of consecutive positions that are all valid hits. Longest first;
    among runs of equal length, the one that starts first. Padded with (0, 0). `origin` (B,):
    subtracted from each run's start (None: row positions).
    """
    B, T = tok_hit.shape
    hits = tok_hit & valid
    index = torch.arange(T, device=hits.device).expand(B, T)
    # the last position before t that is not a hit (-1 if none): a run ending at t starts after it
    breaks = torch.where(hits, torch.full_like(index, -1), index)
    last_break = breaks.cummax(dim=1).values
    length = torch.where(hits, index - last_break, torch.zeros_like(index))  # (B, T)
    # keep each run's length at its last position only
    next_hit = torch.nn.functional.pad(hits[:, 1:], (0, 1), value=False)
    ends = torch.where(hits & ~next_hit, length, torch.zeros_like(length))
    width = min(r, T)
    # longest first; among equal lengths the earlier run (a smaller end): order by length * (T + 1) - end
    key = ends * (T + 1) - index
    _, end_at = key.topk(width, dim=1)
    run_length = ends.gather(1, end_at)
    if origin is not None:
        end_at = end_at - origin.unsqueeze(1)
    start = torch.where(run_length > 0, end_at - run_length + 1, torch.zeros_like(end_at))
    runs = torch.stack([start, run_length], dim=2).reshape(B, 2 * width).int()  # (B, 2 * width)
    if width < r:
        runs = torch.nn.functional.pad(runs, (0, 2 * (r - width)), value=0)
    return runs
