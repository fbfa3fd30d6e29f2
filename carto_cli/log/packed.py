"""Packed sequences: several documents in one row, one logged presentation per document.

Pre-training packs documents end to end into rows of T tokens. Then a row is not a sample:

    log.record(None, epoch=e, step=s, logits=logits[:, :-1], labels=y[:, 1:], segment_ids=seg[:, 1:])

`segment_ids` (B, T), integers: at each position, the sample id of the document that position's
*label* belongs to, or a negative value (-1) for padding and positions that belong to no document.
The sample ids come from it alone, so `record`'s first argument must be None. A *document* of a row
is a maximal stretch of consecutive positions with one segment id; each one becomes one logged row,
with exactly the columns it would get if it were logged alone, in its own row padded with
`ignore_index`, with the same per-position logits and labels: `loss`, `token_acc`, `n_tokens` and
`tail_loss` over its target positions, `correct` by the default rule, and the memorization sketch
with positions relative to the document's first target, runs of greedy hits ending at its edges.
A document whose positions all have `ignore_index` labels is logged with NaN loss and 0 tokens, as
an unpacked row without targets is; positions with a negative segment id count for no document.

Sketch positions, side by side with unpacked rows (`carto_cli.log.sketch`): an unpacked row logs
them relative to the row's first target; a packed document relative to the document's first target
(its first position whose label is not `ignore_index`), not to its first position. The two differ
where a document begins with masked labels: the boundary position the docs advise masking (the
previous document's last logit predicting this document's first token), or a masked prompt. The
first target is the rule for both so that a document logs exactly what it would log alone in an
unpacked row, however it was padded or prompted there, and so that the same document packed at
another offset, behind another boundary, or unpacked in another epoch keeps its positions: the
scorer compares a sample's positions across its presentations.

One id in several stretches (a long document split across rows, or cut in two within a row) is
several presentations at the same step, one per stretch, each over its own part of the document:
the log cannot know where in the document a stretch started, so its sketch positions are relative to
the stretch's first target. Scoring sees equal steps (see docs/scoring.md, presentation order).

How it is computed, on the logits' device and without synchronising with the host, although the
number of documents per row is only known there: the shim's per-token losses and greedy hits
(`shim._per_token`, the fused kernel on CUDA) are reduced into fixed-size (B, D) slots, one per
document of a row in order, with scatter-adds, where D = min(`max_docs_per_row`, T) is static. The
top losses (for the tail and the sketch) and the longest runs of greedy hits per document come from
one stable sort of each row by an int64 key, document first, then the value descending, so that a
document's largest values are the first entries of its stretch of the sorted row: a (B, D, k)
gather, O(B * T log T) for the sort where a masked top-k per document would be O(B * D * T). The
slots, a (B, D) mask of the slots that hold a document and the number of documents of rows that had
more than D go to the host with the other columns; the writer thread drops the empty slots
(`compact`), and fails (reported at the next `record`) when a row held more than D documents,
naming `max_docs_per_row`: nothing is truncated silently.

Against unpacked logging (tests/test_packed.py): the token losses and hits are the same values, so
every column is equal except `loss`, which sums a document's token losses one after another (the
scatter-add) where the unpacked row sum is a vectorised tree: equal to float32 rounding (1-2 ulp).
`tail_loss` sums the same k losses in the same order, largest first. Among exactly equal token
losses a packed row takes the earlier position first (its sort is stable); the unpacked `topk`
promises no order among exact ties (docs/logging.md), which random logits do not produce.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from carto_cli.errors import OptionError
from carto_cli.log import schema

DEFAULT_MAX_DOCS = 256
PRESENT = "_present"  # (B * D,) bool: the slot holds a document to log (and `keep` is True for its row)
OVER_CAP = "_docs_over_cap"  # (B * D,) int32: the number of documents of a row that had more than D, else 0
_MAX_T = 2**21 - 1  # the runs' composite key, (T + 1) ** 3, must fit int64


def document_columns(
    torch: Any,
    tok_loss: Any,
    tok_hit: Any,
    valid: Any,
    segment_ids: Any,
    *,
    keep: Any,
    max_docs: int,
    tail_k: int,
    correct_threshold: float,
    sketch_k: int,
    sketch_runs: int,
) -> dict[str, Any]:
    """The log columns of every document slot, flattened to (B * D,) (lists: (B * D, W)), with the
    slot mask `PRESENT` and the overflow count `OVER_CAP`, all on the device of `tok_loss`.

    `tok_loss` (B, T) float32, 0 where there is no target; `tok_hit` (B, T) bool greedy hits;
    `valid` (B, T) bool target positions; `segment_ids` (B, T) integers; `keep` None or (B,) bool.
    """
    B, T = tok_loss.shape
    if not hasattr(segment_ids, "shape") or tuple(segment_ids.shape) != (B, T):
        shape = tuple(segment_ids.shape) if hasattr(segment_ids, "shape") else type(segment_ids).__name__
        raise OptionError(f"CartoLogger.record: segment_ids must be (B, T) like labels, {(B, T)}; got {shape}")
    if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
        raise OptionError(f"CartoLogger.record: segment_ids must hold integer sample ids; got {segment_ids.dtype}")
    if max_docs < 1:
        raise OptionError(f"CartoLogger.record: max_docs_per_row must be >= 1; got {max_docs}")
    if not 1 <= T <= _MAX_T:
        raise OptionError(f"CartoLogger.record: segment_ids needs rows of 1 to {_MAX_T} positions; got {T}")
    device = tok_loss.device
    D = min(max_docs, T)  # a row holds at most T documents
    seg = segment_ids.to(device).long()
    in_doc = seg >= 0
    start = in_doc & (seg != torch.nn.functional.pad(seg[:, :-1], (1, 0), value=-1))  # a document's first position
    doc = start.long().cumsum(dim=1) - 1  # (B, T) the row's document index of each position in a document
    n_docs = start.sum(dim=1)  # (B,)
    # D: the slot nothing reads, for positions outside any document (and documents past the cap)
    slot = torch.where(in_doc & (doc < D), doc, torch.full_like(doc, D))
    index = torch.arange(T, device=device).expand(B, T)

    def per_slot(values: Any) -> Any:  # (B, T) -> (B, D) sums over each document's positions
        return torch.zeros((B, D + 1), dtype=values.dtype, device=device).scatter_add_(1, slot, values)[:, :D]

    length = per_slot(torch.ones_like(doc))  # (B, D) positions of each document
    n_tok = per_slot(valid.long())
    first = torch.full((B, D + 1), T, dtype=torch.long, device=device).scatter_reduce_(
        1, slot, index, reduce="amin")[:, :D]  # (B, D) each document's first position; T where none
    # (B, D) each document's first target: sketch positions are relative to it; T where none (then the
    # sketch holds no position)
    first_target = torch.full((B, D + 1), T, dtype=torch.long, device=device).scatter_reduce_(
        1, torch.where(valid, slot, D), index, reduce="amin")[:, :D]
    ids = seg.gather(1, first.clamp(max=T - 1))
    present = torch.arange(D, device=device) < n_docs.unsqueeze(1)  # (B, D)
    if keep is not None:
        keep = torch.as_tensor(keep, device=device).bool().reshape(-1)
        if keep.shape[0] != B:
            raise OptionError(f"CartoLogger.record: keep has {keep.shape[0]} rows but the batch has {B}")
        present = present & keep.unsqueeze(1)

    # Sorted by (document, value descending, position): rank_doc orders the documents, outside last.
    rank_doc = torch.where(in_doc, T - doc, torch.zeros_like(doc))
    offsets = length.cumsum(dim=1) - length  # (B, D) where each document's stretch starts in the sorted row

    def top(key: Any, span: int, k: int) -> tuple[Any, Any]:
        """(positions, inside), each (B, D, k): the positions of the k largest `key`s (ints in [0, span))
        of each document, largest first, equal keys by position; inside is False past its end."""
        order = (rank_doc * span + key).argsort(dim=1, descending=True, stable=True)
        j = torch.arange(k, device=device)
        at = (offsets.unsqueeze(2) + j).clamp(max=T - 1).reshape(B, D * k)
        return order.gather(1, at).view(B, D, k), j < length.unsqueeze(2)

    loss_at = torch.where(valid, tok_loss.float() + 0.0, float("-inf"))  # + 0.0 turns -0.0 into 0.0
    bits = loss_at.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long() + 2**31  # float order as ints in [0, 2**32)
    K = max(tail_k, sketch_k)
    positions, inside = top(ordered, 2**32, K)
    values = loss_at.gather(1, positions.reshape(B, D * K)).view(B, D, K)
    found = inside & (values != float("-inf"))  # (B, D, K) a target position of the document
    n = n_tok.float()
    sums = torch.stack([per_slot(tok_loss.float()), per_slot((tok_hit & valid).float()),
                        torch.where(found[..., :tail_k], values[..., :tail_k], 0.0).sum(dim=2)])  # (3, B, D)
    loss, acc, tail = (sums / torch.stack([n, n, n.clamp(max=tail_k)])).unbind(0)  # NaN without a target
    columns = {
        schema.SAMPLE_ID: ids,
        schema.LOSS: loss,
        schema.CORRECT: acc >= correct_threshold,
        schema.TOKEN_ACC: acc,
        schema.TAIL_LOSS: tail,
        schema.N_TOKENS: n_tok.int(),
    }
    if sketch_k:
        ok = found[..., :sketch_k]
        columns[schema.TOP_POS] = torch.where(ok, positions[..., :sketch_k] - first_target.unsqueeze(2), 0).int()
        columns[schema.TOP_LOSS] = torch.where(ok, values[..., :sketch_k], float("nan")).half()
        columns[schema.HIT_RUNS] = _hit_runs(torch, tok_hit & valid & in_doc, start, index, first_target, top,
                                             sketch_runs)
    columns = {name: value.reshape(B * D, -1) if value.dim() == 3 else value.reshape(B * D)
               for name, value in columns.items()}
    columns[PRESENT] = present.reshape(B * D)
    columns[OVER_CAP] = torch.where(n_docs > D, n_docs, 0).int().unsqueeze(1).expand(B, D).reshape(B * D)
    return columns


def _hit_runs(torch: Any, hits: Any, start: Any, index: Any, first: Any, top: Any, r: int) -> Any:
    """(B, D, 2r) int32: start (relative to `first` (B, D), the document's first target) and length of
    the r longest runs of greedy hits of each document, as `sketch.hit_runs` computes them for a row,
    with a run also ending at the document's edges."""
    B, T = hits.shape
    # the last position before t that ends a run (not a hit, or the last of the previous document)
    breaks = torch.where(hits, torch.where(start, index - 1, -1), index)
    length = torch.where(hits, index - breaks.cummax(dim=1).values, 0)  # (B, T)
    goes_on = torch.nn.functional.pad(hits[:, 1:] & ~start[:, 1:], (0, 1), value=False)
    ends = torch.where(hits & ~goes_on, length, 0)  # each run's length at its last position
    positions, inside = top(ends * (T + 1) - index + T, (T + 1) ** 2, r)  # longest first, then the earlier
    run_length = torch.where(inside, ends.gather(1, positions.flatten(1)).view_as(positions), 0)
    run_start = torch.where(run_length > 0, positions - run_length + 1 - first.unsqueeze(2), 0)
    return torch.stack([run_start, run_length], dim=3).flatten(2).int()  # (B, D, 2r)


def compact(batch: Any) -> None:
    """In the writer thread: keep a packed batch's document slots only, or fail on a row that held more
    documents than its slots. Waits for the batch's device -> host copy. Other batches pass unchanged."""
    if PRESENT not in batch.columns:
        return
    if batch.ready is not None:
        batch.ready.synchronize()
        batch.ready = None
    arrays = {name: value.numpy() if hasattr(value, "numpy") else value for name, value in batch.columns.items()}
    over = arrays.pop(OVER_CAP)
    present = np.asarray(arrays.pop(PRESENT), dtype=bool)
    if len(over) and over.max() > 0:
        raise OptionError(
            f"CartoLogger.record(segment_ids=): a packed row at step {batch.step} held {int(over.max())} "
            f"documents, more than max_docs_per_row; pass max_docs_per_row={int(over.max())} or more"
        )
    batch.columns = {name: value[present] for name, value in arrays.items()}
