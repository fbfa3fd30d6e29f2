"""`carto score --data`: the findings pass after the scores are written (see `carto_cli.score.findings`).

1. The samples whose evidence (`extractable`) passes `min_evidence` are read from the scores file.
2. Their best runs and cores (`spans.best_spans`), one semi-joined scan of the log's sketch.
3. Where logged positions land in the dataset's rows: the label shift the log declares
   (`carto.label_shift`, written by CartoTrainer and CartoCallback), else `--label-shift`, else
   measured: the shift s at which a row of the dataset has exactly as many targets as the log
   counted for that sample (`n_tokens`), for nearly every memorized sample (`infer_label_shift`).
4. Their strings, every copy in the dataset, public where the reference holds one (`findings.find`).
5. The scores are rewritten: `memorization` becomes the evidence of the strongest private finding a
   sample carries (0 without one; null where the sample's own signal was null and it carries
   none), the sample's own value moves to `signal`, `finding` names the finding, and the samples are
   placed again with the memorization threshold at 0 (high = carries a private finding) unless
   an absolute memorization threshold was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from carto_cli.errors import DatasetError, OptionError
from carto_cli.io import artifacts
from carto_cli.io.logs import LogSet, scan
from carto_cli.io.tokens import TokenDataset
from carto_cli.log import schema
from carto_cli.score import findings as core
from carto_cli.score import quadrants, spans

SHIFTS = (1, 0, 2)  # the label shifts tried when the log declares none, in this order
# What the memorization column holds after the findings pass (`carto score`'s header says it).
DESCRIPTION = "the evidence of the strongest private finding the sample carries (nats; 0 without one)"


@dataclass
class FindingsRun:
    """What the findings pass did, for `carto score` to print and record."""

    path: Path
    findings: core.Findings
    label_shift: int
    label_shift_source: str  # "declared by the log", "--label-shift", or "measured"
    carriers: int  # samples that carry a private finding
    thresholds: quadrants.Thresholds


def declared_label_shift(logset: LogSet) -> int | None:
    """The label shift the log's parts declare (None where none does); one line when they disagree."""
    found = {part.metadata.get(schema.META_LABEL_SHIFT) for part in logset.parts} - {None}
    if len(found) > 1:
        raise OptionError(f"the log's parts declare different label shifts ({', '.join(sorted(found))}); "
                          "score one run at a time (--run), or pass --label-shift")
    return int(found.pop()) if found else None


def infer_label_shift(data: TokenDataset, ids: np.ndarray, n_tokens: np.ndarray) -> int:
    """The shift s for which row lengths minus s (or, with labels, the targets from s on) equal the
    logged target counts of at least 90% of the samples; one line when no shift does."""
    known = ~np.isnan(n_tokens)
    if not known.any():
        raise OptionError("the log has no n_tokens and declares no label shift, so where its positions land "
                          "in the dataset's rows is unknown; pass --label-shift (1 for a causal LM whose labels "
                          "are its inputs, 0 when logits[:, t] scores the row's token t)")
    agreement = {}
    for shift in SHIFTS:
        data.label_shift = shift
        rows = data.rows(ids[known])
        targets = rows.lengths() - rows.first_target
        agreement[shift] = float(np.mean(targets == n_tokens[known]))
        if agreement[shift] >= 0.9:
            return shift
    best = max(agreement, key=agreement.get)
    raise DatasetError(
        f"{data.path}: its rows do not have the number of targets the log counted (at best {agreement[best]:.0%} "
        f"of the memorized samples agree, with a label shift of {best}); pass the dataset the model was trained "
        "on and its tokenizer, or --label-shift if the rows were truncated in training")


@dataclass(frozen=True)
class FindingsRequest:
    """What `carto score --data` asks of the findings pass."""

    data: TokenDataset
    out: Path  # the findings file
    params: core.FindingParams = core.FindingParams()
    reference: TokenDataset | None = None
    label_shift: int | None = None  # --label-shift; None: declared by the log, else measured
    m_threshold: float | None = None  # --m-threshold; None: 0 (high = carries a private finding)


def run(logset: LogSet, scores_path: Path, request: FindingsRequest, *, early_epochs: int,
        drop_nonfinite: bool, searcher: core.Search = core.search) -> FindingsRun:
    """The findings pass over a scores file `carto score` just wrote (see the module docstring);
    `searcher`: where the dataset is searched (locally, or `ray.ray_search`)."""
    data, reference, params = request.data, request.reference, request.params
    scores, prov = artifacts.read(scores_path, "scores")
    ids = scores.filter(pl.col("memorization") >= params.min_evidence)["sample_id"].to_numpy()
    columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, *schema.SKETCH_COLUMNS]
    if logset.has_column(schema.N_TOKENS):
        columns.append(schema.N_TOKENS)
    lf = scan(logset, [*columns, schema.LOSS])
    if drop_nonfinite:  # as the scores drop them
        lf = lf.filter(pl.col(schema.LOSS).is_finite())
    best = spans.best_spans(lf.drop(schema.LOSS), ids, early_epochs=early_epochs)
    shift, source = _label_shift(logset, request.label_shift, data, best)
    data.label_shift = shift
    if reference is not None:
        reference.label_shift = shift
    evidence = (best.select("sample_id").join(scores.select("sample_id", "memorization"), on="sample_id", how="left")
                ["memorization"].to_numpy())
    found = core.find(best, evidence, data, params=params, reference=reference, searcher=searcher)
    table = found.table.join(presentations(lf, found.copies), on="finding", how="left")
    write_findings(table, found, request.out, data, reference, params, shift, source)
    previous = quadrants.Thresholds(**prov["thresholds"])
    rescored, thresholds = rescore(scores, found, previous, request.m_threshold)
    artifacts.write(rescored, scores_path, {**prov, "thresholds": thresholds.as_dict(), "memorization": DESCRIPTION,
                                            "signal": prov.get("memorization"), "findings": {
        "path": str(request.out), "data": str(data.path),
        "reference": None if reference is None else str(reference.path),
        "label_shift": shift, "label_shift_source": source, **_parameters(params)}})
    carriers = int(rescored["finding"].is_not_null().sum())
    return FindingsRun(request.out, found, shift, source, carriers, thresholds)


def _label_shift(logset: LogSet, option: int | None, data: TokenDataset, best: pl.DataFrame) -> tuple[int, str]:
    declared = declared_label_shift(logset)
    if option is not None:
        return option, "--label-shift"
    if declared is not None:
        return declared, "declared by the log"
    if not best.height:
        return data.label_shift, "default (no memorized sample to measure it on)"
    shift = infer_label_shift(data, best["sample_id"].to_numpy(), best["n_tokens"].cast(pl.Float64).to_numpy())
    return shift, "measured"


def presentations(lf: pl.LazyFrame, copies: pl.DataFrame) -> pl.DataFrame:
    """Per finding: the first and last step at which any of its carriers was presented."""
    carriers = copies.select("finding", "sample_id").unique()
    steps = (lf.select(schema.SAMPLE_ID, schema.STEP)
             .join(carriers.select(pl.col("sample_id").alias(schema.SAMPLE_ID)).unique().lazy(),
                   on=schema.SAMPLE_ID, how="semi")
             .group_by(schema.SAMPLE_ID).agg(pl.col(schema.STEP).min().alias("first"),
                                               pl.col(schema.STEP).max().alias("last"))
             .collect())
    return (carriers.join(steps, left_on="sample_id", right_on=schema.SAMPLE_ID)
            .group_by("finding")
            .agg(pl.col("first").min().alias("first_step"), pl.col("last").max().alias("last_step")))


def rescore(scores: pl.DataFrame, found: core.Findings, previous: quadrants.Thresholds,
            m_threshold: float | None) -> tuple[pl.DataFrame, quadrants.Thresholds]:
    """The scores with `signal` (the sample's own value), `finding`, and memorization from findings,
    placed again: the difficulty threshold as before, memorization high above `m_threshold` (0:
    carries a private finding)."""
    carried = found.per_sample()
    joined = (scores.drop("quadrant", "signal", "finding", strict=False)
              .rename({"memorization": "signal"})
              .join(carried.select("sample_id", "finding", "finding_evidence"), on="sample_id", how="left")
              .with_columns(memorization=pl.coalesce(pl.col("finding_evidence"),
                                                     pl.when(pl.col("signal").is_not_null()).then(0.0)))
              .drop("finding_evidence"))
    thresholds = quadrants.Thresholds(difficulty=previous.difficulty,
                                      memorization=0.0 if m_threshold is None else m_threshold,
                                      difficulty_quantile=previous.difficulty_quantile, memorization_quantile=None)
    placed = quadrants.assign(joined, thresholds)
    order = [c for c in scores.columns if c not in ("memorization", "signal", "finding")]
    where = order.index("difficulty") + 1
    columns = [*order[:where], "memorization", "signal", "finding", *order[where:]]
    return placed.select(columns), thresholds


def write_findings(table: pl.DataFrame, found: core.Findings, out: Path, data: TokenDataset,
                   reference: TokenDataset | None, params: core.FindingParams, shift: int, source: str) -> None:
    """One row per finding, its copies as a list of (sample_id, start, length) in dataset tokens."""
    copies = (found.copies.group_by("finding")
              .agg(pl.struct("sample_id", "start", "length").alias("copies_at")))
    frame = table.join(copies, on="finding", how="left").sort("finding")
    prov = artifacts.provenance(
        "findings", inputs=[{"path": str(data.path)}] + ([{"path": str(reference.path), "role": "reference"}]
                                                         if reference is not None else []),
        parameters={**_parameters(params), "label_shift": shift, "label_shift_source": source},
        candidates=found.candidates, sources=found.sources, short_runs=found.short, unmatched=found.unmatched,
        tokens=data.describe)
    artifacts.write(frame, out, prov)


def _parameters(params: core.FindingParams) -> dict:
    return {"min_evidence": params.min_evidence, "min_length": params.min_length, "overlap": params.overlap}
