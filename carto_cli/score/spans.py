"""Each memorized sample's span: the run of greedy hits that gives its `extractable` value, and the
surprising tokens inside it. What `carto_cli.score.findings` turns into strings.

For a sample s (the `extractable` definition, `carto_cli.score.signals`): early_j is the mean over
its early presentations (epoch < early_epochs) of the sketched loss at position j (0 where j was
not among that presentation's k largest); its last late presentation (epoch >= early_epochs,
largest step, then epoch) logged r runs of greedy hits. The *best run* is the run with the largest
sum of early_j over the positions it holds (ties: the run listed first, i.e. the longest, then the
earliest); its *core* is the stretch from the first to the last position j inside it with a
sketched early loss: the tokens the model could not predict early and now reproduces verbatim.
Positions are the log's (counted from the sample's first target token, `carto_cli.log.sketch`).

Computed with Polars for the samples asked about only (a semi-join on their ids, a scan of the
sketch columns): findings are made from the few samples whose evidence passes a threshold.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carto_cli.log import schema

SPAN_COLUMNS = ("sample_id", "run_start", "run_length", "core_start", "core_end", "value", "n_tokens", "first_step")


def best_spans(lf: pl.LazyFrame, ids: np.ndarray, *, early_epochs: int) -> pl.DataFrame:
    """For each sample in `ids` that has one: its best run [run_start, run_start + run_length),
    its core [core_start, core_end), the run's value (its early losses summed, per early
    presentation: the sample's `extractable` when this run is its best), the number of target
    tokens of its last late presentation (`n_tokens`, null where not logged) and its first step.

    `lf` has sample_id, epoch, step and the sketch columns (rows with a non-finite loss already
    dropped, as for the scores), and n_tokens when the log has it."""
    sid, pos, loss, runs = schema.SAMPLE_ID, schema.TOP_POS, schema.TOP_LOSS, schema.HIT_RUNS
    wanted = pl.Series(sid, ids).cast(lf.collect_schema()[sid])
    has_n_tokens = schema.N_TOKENS in lf.collect_schema().names()
    rows = lf.filter(pl.col(sid).is_in(wanted.implode()))
    sketched = rows.filter(pl.col(pos).is_not_null() & pl.col(loss).is_not_null() & pl.col(runs).is_not_null())
    early_rows = sketched.filter(pl.col(schema.EPOCH) < early_epochs)
    n_early = early_rows.group_by(sid).agg(pl.len().alias("n_early"))
    early = (early_rows.select(sid, pos, loss).explode([pos, loss])
             .filter(pl.col(loss).is_finite())
             .group_by(sid, pos).agg(pl.col(loss).sum().alias("early")))
    order = [schema.STEP, schema.EPOCH]
    last = (sketched.filter(pl.col(schema.EPOCH) >= early_epochs).group_by(sid)
            .agg(pl.col(runs).sort_by(order).last(),
                 (pl.col(schema.N_TOKENS).sort_by(order).last() if has_n_tokens
                  else pl.lit(None, dtype=pl.Int64)).alias("n_tokens")))
    spans = (last.select(sid, "n_tokens", pl.col(runs).list.gather_every(2).alias("run_start"),
                         pl.col(runs).list.gather_every(2, offset=1).alias("run_length"))
             .with_columns(run=pl.int_ranges(pl.col("run_start").list.len()))
             .explode(["run_start", "run_length", "run"])
             .filter(pl.col("run_length") > 0))
    inside = (pl.col(pos) >= pl.col("run_start")) & (pl.col(pos) < pl.col("run_start") + pl.col("run_length"))
    per_run = (spans.join(early, on=sid).filter(inside)
               .group_by(sid, "run", "run_start", "run_length", "n_tokens")
               .agg(pl.col("early").sum().alias("sum"), pl.col(pos).min().alias("core_start"),
                    (pl.col(pos).max() + 1).alias("core_end"))
               .join(n_early, on=sid)
               .with_columns(value=pl.col("sum") / pl.col("n_early")))
    first_step = rows.group_by(sid).agg(pl.col(schema.STEP).min().alias("first_step"))
    best = (per_run.sort([sid, "sum", "run"], descending=[False, True, False])
            .group_by(sid, maintain_order=True).first()
            .join(first_step, on=sid, how="left"))
    return best.select(*SPAN_COLUMNS).collect().sort(sid)
