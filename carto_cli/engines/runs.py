"""Several runs (seeds) in one scoring: per-run counts, then summed, as Toneva et al. (2019) do.

A log may hold the parts of several training runs (`carto.run_id`, see `carto_cli.io.replays`):
seeds of one recipe, say. Presentations of different runs are not one sequence, so a sample's
forget events are counted within each run and then added up, with its transitions:

    memorization_i = sum_r forget_events_ir / sum_r (n_seen_ir - 1)

(the paper's "forget events relative to transitions", pooled over runs). The order-free sums
(presentations, correct ones, early and all losses) are added too, so `difficulty` is the mean
early loss over every run's early presentations, and `first_learned_epoch` is the earliest over
runs. A label-free signal (`extractable`, `token-drop`, ...) is computed per run and averaged over
the runs in which the sample has a value. The correctness rule is decided once over all runs (a
percentile threshold is a percentile of every run's rows).

`--run ID` scores one run of such a log. Several runs are combined by the local engine over an
unbucketed log; a bucketed log, Ray and `--update` score one run (refused otherwise, with the fix).
"""

from __future__ import annotations

import polars as pl

from carto_cli.engines import local
from carto_cli.engines import plan as planner
from carto_cli.errors import OptionError
from carto_cli.io import replays
from carto_cli.io.logs import LogSet
from carto_cli.log import schema
from carto_cli.score.rules import ScoreParams
from carto_cli.score.state import STATE_COLUMNS

# State columns that describe one run's sequence of presentations: meaningless summed over runs.
_SEQUENCE_COLUMNS = ("first_step", "first_epoch", "first_correct", "last_step", "last_epoch", "last_correct")


def run_ids(logset: LogSet) -> list[str]:
    """The runs a log holds, sorted ("" is the run of parts without attempt metadata)."""
    return sorted({replays.run_of(p.metadata) for p in logset.parts})


def select_run(logset: LogSet, run: str) -> LogSet:
    """The parts of one run; an error listing the runs there are when it is not among them."""
    parts = [p for p in logset.parts if replays.run_of(p.metadata) == run]
    if not parts:
        known = ", ".join(repr(r) for r in run_ids(logset))
        raise OptionError(f"--run {run!r}: no part of these logs belongs to that run; runs here: {known}")
    return LogSet(parts=parts, skipped=logset.skipped, replayed_rows=logset.replayed_rows)


def combine_states(states: list[pl.DataFrame]) -> pl.DataFrame:
    """Per-run states -> one state per sample: counts and sums added, `transitions` added beside
    them (sum over runs of n_seen - 1), first_learned_epoch the earliest. The per-run sequence
    columns (first/last presentation) are not carried: a combined state cannot be merged in time."""
    additive = [c for c in states[0].columns
                if c not in (schema.SAMPLE_ID, "first_learned_epoch", *_SEQUENCE_COLUMNS)]
    stacked = pl.concat([s.select(schema.SAMPLE_ID, "first_learned_epoch", *additive) for s in states],
                        how="vertical_relaxed")
    return stacked.group_by(schema.SAMPLE_ID).agg(
        *(pl.col(c).sum() for c in additive),
        (pl.col("n_seen") - 1).sum().alias("transitions"),
        pl.col("first_learned_epoch").min(),
    )


def score_runs(logset: LogSet, params: ScoreParams, *, stream: bool = False) -> local.ScoreResult:
    """The scores of a log of one run (`local.score`, streamed where it can with `stream`) or
    several (combined as described above, in memory)."""
    ids = run_ids(logset)
    if len(ids) < 2:
        return local.score(logset, params, stream=stream)
    params = planner.resolve_signal(logset, params)
    plan = planner.prepare(logset, params)  # one correctness rule for every run
    per_run = [select_run(logset, run).parts for run in ids]
    states, samples_general = [], 0
    for parts in per_run:
        state, general = local.full_state(plan.kernel, parts, dense_ok=params.method == "auto")
        states.append(state.select(STATE_COLUMNS))
        samples_general += general
    combined = combine_states(states)
    transitions = combined.select(schema.SAMPLE_ID, "transitions")
    # `finalize` needs the sequence columns only through their names: fill them with nulls.
    state = combined.drop("transitions").with_columns(pl.lit(None).alias(c) for c in _SEQUENCE_COLUMNS)
    result = local.finish(state.select(STATE_COLUMNS), plan, params, samples_general)
    result.scores = _pooled_memorization(result.scores, transitions, params.never_learned)
    if params.memorization != "forgets":
        values = [local.signal_values(parts, plan, params) for parts in per_run]
        mean = pl.concat(values, how="vertical_relaxed").group_by(schema.SAMPLE_ID).agg(pl.col("value").mean())
        result.scores = local.with_signal(result.scores, mean)
    result.notes = [*result.notes, f"{len(ids)} runs ({', '.join(repr(r) for r in ids)}): counted per run, "
                                   "then summed (--run ID scores one)"]
    return result


def _pooled_memorization(scores: pl.DataFrame, transitions: pl.DataFrame, never_learned: str) -> pl.DataFrame:
    """Forget events over the runs' pooled transitions, with the never-learned policy of `finalize`
    (which divided by the pooled n_seen - 1, one transition too many per extra run)."""
    pooled = pl.col("forget_events") / pl.col("transitions").clip(lower_bound=1)
    return (scores.join(transitions, on=schema.SAMPLE_ID, how="left")
            .with_columns(memorization=pl.when(pl.col("ever_learned")).then(pooled)
                          .otherwise(pl.col("memorization")))
            .drop("transitions").sort(schema.SAMPLE_ID))
