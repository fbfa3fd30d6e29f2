"""The local engine: a log reduced in this process, in memory, by the plan's kernel.

- `score(logset, params)`: the per-sample scores of a whole (unbucketed) log: the dense-id kernel
  when the plan says so and it applies, else the Polars kernel in passes of `plan.ROWS_PER_PASS`
  rows; then the memorization signal, when one was asked for. With `stream=True` (`carto score`)
  the dense kernel's scores come as a `StreamedScores`, made as they are written, where the
  compiled kernel reduces the log in one pass (`dense_stream`).
- `dense_state`: the dense kernel, with the samples it cannot count (a repeat within an epoch, a
  gap between epochs) recounted exactly by the general Polars kernel. Used here, per bucket
  (`carto_cli.engines.buckets`) and by `--update` (`carto_cli.engines.incremental`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from carto_cli.engines import plan as planner
from carto_cli.engines.plan import Kernel, Plan
from carto_cli.io.logs import LogPart, LogSet, scan
from carto_cli.log import schema
from carto_cli.score import compiled, dense, dense_columns, extract, signals, streamed
from carto_cli.score.rules import CorrectnessRule, ScoreParams
from carto_cli.score.state import SCORE_COLUMNS, finalize, segment_state


@dataclass
class ScoreResult:
    """The per-sample scores plus what a user must be told about how they were obtained."""

    scores: pl.DataFrame | streamed.StreamedScores  # streamed only where `score(stream=True)` was asked
    rule: CorrectnessRule
    rows_used: int
    rows_dropped_nonfinite: int
    method: str  # the implementation that counted forget events
    samples_general: int  # samples recounted by the general path under the bitmask method
    notes: list[str] = field(default_factory=list)
    memorization: str = "forget events / transitions"  # what the memorization column holds


def score(logset: LogSet, params: ScoreParams = ScoreParams(), *, stream: bool = False) -> ScoreResult:
    """Per-sample scores (one row per sample, sorted by sample_id) of a checked log set. With
    `stream`, `scores` is a `StreamedScores` where the dense kernel allows it (`dense_stream`):
    the same scores, made a chunk at a time as they are written. There, the `extractable` signal
    is computed first (`extract`, by slot), so that its arrays are freed before the dense kernel's
    are made: the two never coexist."""
    params = planner.resolve_signal(logset, params)
    plan = planner.plan(logset, params)
    reduced, signal = None, _NOT_YET
    streaming = plan.dense and stream and streamed.applies(logset)
    if streaming and params.memorization == "extractable":
        signal = extract.extractable(logset, early_epochs=params.early_epochs,
                                     drop_nonfinite=plan.kernel.drop_nonfinite, by_slot=True)
    if streaming:
        reduced = dense_stream(logset, plan.kernel, never_learned=params.never_learned)
    elif plan.dense:
        reduced = dense_scores(logset, plan.kernel, never_learned=params.never_learned)
    if reduced is None and not plan.checked:
        # the dense kernel declined on a plan made from the footers: make the checking pass, and
        # do not run the dense kernel again over the same rows
        plan = planner.prepare(logset, params)
        plan.dense = False
    if reduced is not None:
        scores, samples_general, dropped = reduced
        if not plan.checked:
            plan.count_dropped(dropped, params)  # else `prepare` counted them
        plan.kernel = replace(plan.kernel, method="dense")
    else:
        state, samples_general = plan.kernel.state([str(p.path) for p in logset.parts],
                                                   passes=planner.passes(logset))
        scores = finalize(state, never_learned=params.never_learned)
    result = scored(scores, plan, samples_general)
    if params.memorization != "forgets":
        if isinstance(scores, streamed.StreamedScores) and isinstance(signal, extract.Extracted):
            scores.signal = signal
            return result
        values = signal.frame() if isinstance(signal, extract.Extracted) else signal_values(
            logset.parts, plan, params, kernel=signal is _NOT_YET)
        if isinstance(scores, streamed.StreamedScores):
            scores.signal = values
        else:
            result.scores = with_signal(result.scores, values)
    return result


_NOT_YET = object()  # `score`: the signal's kernel has not run (None: it ran and declined)


def dense_stream(logset: LogSet, kernel: Kernel, *, never_learned: str
                 ) -> tuple[streamed.StreamedScores, int, int] | None:
    """`dense_scores`, streamed: the accumulators of the whole log (`dense.accumulated`), the
    samples the dense kernel cannot count recounted by the general path, as a `StreamedScores`
    that makes the score columns as they are written; (scores, samples recounted, non-finite rows
    dropped), or None where the dense kernel declines. `streamed.applies(logset)` must hold."""
    found = dense.accumulated(logset, kernel)
    if found is None:
        return None
    sums, first_id = found
    unsigned = kernel.sample_id_dtype == "UInt64"
    scores = streamed.StreamedScores(sums, first_id, unsigned, kernel.early_epochs, never_learned)
    irregular = scores.irregular_ids()
    if len(irregular):
        scores.recount = _recounted_scores(logset, kernel, irregular, never_learned)
    return scores, len(irregular), sums.dropped


def dense_state(logset: LogSet, kernel: Kernel, **options) -> tuple[pl.DataFrame, int, int] | None:
    """`dense.state` over `logset` (`options`: its `stride` and `full`), the samples it could not
    count recounted exactly by the general path: (state, samples recounted, non-finite rows
    dropped), or None where the dense kernel does not apply."""
    reduced = dense.state(logset, kernel, **options)
    if reduced is None:
        return None
    state, irregular, dropped = reduced
    if len(irregular):
        recount = _recount(logset, kernel, irregular, state.schema[schema.SAMPLE_ID])
        state = pl.concat([state, recount.select(state.columns)], how="vertical_relaxed")
    return state, len(irregular), dropped


def dense_scores(logset: LogSet, kernel: Kernel, *, never_learned: str, stride: int = 1
                 ) -> tuple[pl.DataFrame, int, int] | None:
    """The scores (`finalize`'s columns, sorted by sample_id) by the dense kernel, the samples it
    could not count recounted exactly by the general path: (scores, samples recounted, non-finite
    rows dropped), or None where the dense kernel does not apply. With the compiled extension the
    scores come straight from the kernel's accumulators (`dense.scores`), else from its state."""
    if not compiled.available():
        reduced = dense_state(logset, kernel, stride=stride)
        if reduced is None:
            return None
        state, general, dropped = reduced
        return finalize(state, never_learned=never_learned), general, dropped
    reduced = dense.scores(logset, kernel, never_learned=never_learned, stride=stride)
    if reduced is None:
        return None
    columns, irregular, dropped = reduced
    unsigned = kernel.sample_id_dtype == "UInt64"
    if len(irregular):  # their rows hold provisional values: replace them with the general path's
        dense_columns.replace_rows(columns, _recounted_scores(logset, kernel, irregular, never_learned), unsigned)
    return dense_columns.frame(columns, unsigned), len(irregular), dropped


def _recounted_scores(logset: LogSet, kernel: Kernel, ids: np.ndarray, never_learned: str) -> pl.DataFrame:
    """The scores (`finalize`) of the samples `ids` by the general Polars kernel: the dense kernel's
    irregular samples."""
    dtype = pl.UInt64 if kernel.sample_id_dtype == "UInt64" else pl.Int64
    return finalize(_recount(logset, kernel, ids, dtype), never_learned=never_learned)


def _recount(logset: LogSet, kernel: Kernel, ids: np.ndarray, dtype: pl.DataType) -> pl.DataFrame:
    """The state of the samples `ids` by the general Polars kernel (exact for any presentation order)."""
    frame = kernel.frame([str(p.path) for p in logset.parts]).join(
        pl.Series(schema.SAMPLE_ID, ids).cast(dtype).to_frame().lazy(), on=schema.SAMPLE_ID, how="semi")
    return segment_state(frame, early_epochs=kernel.early_epochs, method="general")[0]


def full_state(kernel: Kernel, parts: list[LogPart], *, dense_ok: bool = True) -> tuple[pl.DataFrame, int]:
    """Every state column (STATE_COLUMNS) of `parts`, as `--update` saves it, and how many samples
    the general path counted: the dense kernel where it applies (and `dense_ok`, i.e. no method
    forced), else `Kernel.state` in passes of ROWS_PER_PASS rows."""
    logset = LogSet(parts)
    if dense_ok and kernel.method == "bitmask":
        reduced = dense_state(logset, kernel, full=True)
        if reduced is not None:
            return reduced[0], reduced[1]
    return kernel.state([str(p.path) for p in parts], passes=planner.passes(logset))


def signal_values(parts: list[LogPart], plan: Plan, params: ScoreParams, *, kernel: bool = True) -> pl.DataFrame:
    """sample_id -> `value` of the signal `params.memorization` over `parts`, which must hold every
    row of their samples (a whole log, or one bucket of it). `kernel=False`: the `extractable`
    kernel already declined on them; the Polars definition runs at once."""
    if params.memorization == "extractable" and kernel:  # the kernel; the Polars definition where it declines
        values = extract.extractable(LogSet(parts), early_epochs=params.early_epochs,
                                     drop_nonfinite=plan.kernel.drop_nonfinite)
        if values is not None:
            return values
    columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.LOSS, *signals.SIGNAL_COLUMNS[params.memorization]]
    lf = scan(LogSet(parts), columns)
    if plan.kernel.drop_nonfinite:
        lf = lf.filter(pl.col(schema.LOSS).is_finite())
    return signals.signal_frame(lf, params.memorization, early_epochs=params.early_epochs,
                                drop_k=params.drop_k, late_from=plan.late_from)


def with_signal(scores: pl.DataFrame, values: pl.DataFrame) -> pl.DataFrame:
    """`scores` with the memorization column replaced by a signal's `values` (from `signal_values`)."""
    return (scores.join(values, on=schema.SAMPLE_ID, how="left")
            .with_columns(pl.col("value").alias("memorization")).select(SCORE_COLUMNS).sort(schema.SAMPLE_ID))


def finish(state: pl.DataFrame, plan: Plan, params: ScoreParams, samples_general: int) -> ScoreResult:
    """Scores from a (merged) state, with the facts a user must be told about them."""
    return scored(finalize(state, never_learned=params.never_learned), plan, samples_general)


def scored(scores: pl.DataFrame | streamed.StreamedScores, plan: Plan, samples_general: int) -> ScoreResult:
    """Scores (from `finalize`, `dense_scores` or `dense_stream`) with the facts a user must be
    told about them."""
    return ScoreResult(
        scores=scores,
        rule=plan.kernel.rule,
        rows_used=scores.rows if isinstance(scores, streamed.StreamedScores) else int(scores["n_seen"].sum()),
        rows_dropped_nonfinite=plan.rows_dropped_nonfinite,
        method=plan.kernel.method,
        samples_general=samples_general,
        notes=plan.notes,
        memorization=plan.memorization,
    )
