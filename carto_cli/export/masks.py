"""Loss masks for the next run: drop only the memorized tokens, keep the rest of every sample.

    spans = mask_spans(findings)                         # a findings file's frame (`carto score --data`)
    mask = LossMask.read("mask.parquet")                 # in the next run's data pipeline
    labels = mask.apply(sample_id, labels, target_offset=0)  # -100 where the target is memorized
    y = mask.mask_batch(ids, x[:, 1:], target_offset=1)      # a plain loop's (B, T) targets

`CartoTrainer(carto_mask="mask.parquet")` applies it in its collator (after yours, before the
Trainer counts the batch's targets), to labels laid out like the inputs, left padding read from
the attention mask.

The Goldfish loss (Hans et al. 2024, "Be like a Goldfish, Don't Memorize!") drops one token in k
from the loss everywhere, chosen by a hash of the preceding tokens, so that no long string is ever
learned verbatim; carto drops, instead, exactly the tokens of every copy of every private finding
(`carto_cli.score.findings`), and nothing else: the model still reads them as context, it is never
trained to produce them.

A mask file has one row per span: `sample_id`, `start`, `length`, in the dataset row's token
indices (the `input_ids` of `carto score --data`, or its tokenizer's tokens), overlapping spans of
one sample merged. To drop a span from the loss, the labels that *predict* its tokens are set to
-100: for a causal LM whose labels are its inputs (shifted inside the model), `labels[t]` for t in
the span; for a plain loop with x = row[:-1], y = row[1:], `y[t - 1]` (`LossMask.apply`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carto_cli.errors import OptionError
from carto_cli.io import artifacts
from carto_cli.score.findings import merge_intervals

IGNORE_INDEX = -100
MASK_COLUMNS = ("sample_id", "start", "length", "finding")


def mask_spans(findings: pl.DataFrame, *, include_public: bool = False) -> pl.DataFrame:
    """One row per span to drop: every copy of every private finding (and public ones when asked),
    overlapping or touching spans of a sample merged (the strongest finding among them named)."""
    chosen = findings if include_public else findings.filter(~pl.col("public"))
    copies = (chosen.select("finding", "evidence", "copies_at").explode("copies_at").drop_nulls("copies_at")
              .unnest("copies_at"))
    if not copies.height:
        return pl.DataFrame(schema={"sample_id": pl.Int64, "start": pl.Int64, "length": pl.Int64, "finding": pl.Int64})
    merged = merge_intervals(copies, ["sample_id"], keep="finding", prefer="evidence")
    return merged.with_columns(pl.col("finding").cast(pl.Int64))


class LossMask:
    """The spans of a mask file by sample id, applied to a sample's labels in the next run."""

    def __init__(self, spans: pl.DataFrame) -> None:
        self.spans: dict[int, list[tuple[int, int]]] = {}
        for sample_id, start, length in spans.select("sample_id", "start", "length").iter_rows():
            self.spans.setdefault(int(sample_id), []).append((int(start), int(length)))

    @classmethod
    def read(cls, path: str | Path) -> LossMask:
        frame, _ = artifacts.read(Path(path), "mask")
        return cls(frame)

    def __len__(self) -> int:
        return len(self.spans)

    def tokens(self, sample_id: int) -> np.ndarray:
        """The dataset token indices of the sample that are masked (sorted, no repeats)."""
        spans = self.spans.get(int(sample_id), ())
        if not spans:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([np.arange(s, s + n) for s, n in spans]))

    def apply(self, sample_id: int, labels: Any, *, target_offset: int, row_offset: int = 0) -> Any:
        """A copy of `labels` (1-D: a list, numpy array or torch tensor; the input is not modified)
        with IGNORE_INDEX at every position whose target is a masked token.

        `target_offset`: labels[p] is the target token p + target_offset of the dataset row. 0 for
        labels laid out like the inputs (a Hugging Face causal LM's `labels`, shifted inside the
        model); 1 for a plain loop's y = row[1:]. `row_offset`: where the dataset row starts in
        `labels` (with left padding, the number of pad positions before it)."""
        if target_offset < 0 or row_offset < 0:
            raise OptionError(f"target_offset and row_offset must be >= 0; got {target_offset} and {row_offset}")
        masked = self.tokens(sample_id)
        out = labels.clone() if hasattr(labels, "clone") else np.array(labels, copy=True)
        if not len(masked):
            return out
        positions = masked - target_offset + row_offset
        positions = positions[(positions >= 0) & (positions < len(out))]
        if hasattr(out, "clone"):  # torch
            import torch

            out[torch.as_tensor(positions, dtype=torch.long, device=out.device)] = IGNORE_INDEX
        else:
            out[positions] = IGNORE_INDEX
        return out

    def mask_batch(self, sample_ids: Any, labels: Any, *, target_offset: int, row_offsets: Any = None) -> Any:
        """`apply` to every row of a (B, T) batch of labels (a new tensor or array; the input is
        not modified): row i is sample `sample_ids[i]`, its dataset row starting at `row_offsets[i]`
        (left padding; None: 0 for every row)."""
        ids = [int(i) for i in (sample_ids.tolist() if hasattr(sample_ids, "tolist") else sample_ids)]
        offsets = [0] * len(ids) if row_offsets is None else [
            int(o) for o in (row_offsets.tolist() if hasattr(row_offsets, "tolist") else row_offsets)]
        if len(offsets) != len(ids) or len(ids) != len(labels):
            raise OptionError(f"mask_batch: {len(ids)} sample ids, {len(offsets)} row offsets and {len(labels)} "
                              "rows of labels; pass one of each per row")
        out = labels.clone() if hasattr(labels, "clone") else np.array(labels, copy=True)
        for row, (sample_id, offset) in enumerate(zip(ids, offsets)):
            if int(sample_id) in self.spans:
                out[row] = self.apply(sample_id, out[row], target_offset=target_offset, row_offset=offset)
        return out


def left_padding(attention_mask: Any) -> Any:
    """(B,) the number of leading padding positions (attention 0) of each row of a (B, T) mask."""
    import torch

    mask = torch.as_tensor(attention_mask)
    return torch.where(mask.any(dim=1), (mask != 0).int().argmax(dim=1), torch.zeros(len(mask), dtype=torch.long))
