"""Memorization signals: what `carto score --memorization` can rank by.

- `auto` (default): `extractable` when the log has the sketch columns (the shim writes them by
  default), else `forgets`; `resolve` decides, and `carto score` says which in its header.
- `extractable`: how much of a sample's early surprise the model now reproduces verbatim. Needs
  the sketch (`carto_cli.log.sketch`: per presentation, the positions and losses of the k largest
  token losses, and the r longest runs of greedy hits). Per sample: early_j = the mean over its
  presentations with epoch < early_epochs of the loss of position j in that presentation's
  sketch, 0 where j was not among its k largest (a lower bound: such a loss was at most the k-th
  largest); then, at its last presentation with epoch >= early_epochs (largest step, then largest
  epoch; of presentations tied on both, as a sample drawn twice in one step is, the one whose
  hit_runs compare largest as lists of integers, lexicographically, so that the value never
  depends on the order of files or rows), the largest sum of early_j over one run of greedy hits,
  in nats. An early presentation counts where its top_pos and top_loss are logged, a late one
  where its hit_runs are (the shim logs all three or none). Under teacher forcing a
  run of greedy hits is exactly what greedy decoding reproduces from the run's true prefix
  (extractability: Carlini et al. 2021 and 2023; Biderman et al. 2023), and weighting its tokens by
  their early loss counts the tokens no general skill predicted (a key, a number), not
  boilerplate the model could always continue. Null without an early and a late presentation
  with a sketch; 0 when no late run covers a sketched early position.
- `forgets`: the paper's forget events / transitions, from the per-presentation correctness
  (`carto_cli.score.state`). The experiment found it ranks memorized samples at chance
  (docs/experiment.md).
- `token-drop`: how far a sample's *most improved* tokens fell. Needs per-token losses in the log
  (`CartoLogger(token_losses=...)`, the `token_loss` column). Per target position j:
  early_j = the mean loss of position j over the presentations with epoch < early_epochs, and
  last_j = its loss at the sample's last presentation with epoch >= early_epochs (largest step,
  then largest epoch). The signal is the mean of the `drop_k` largest early_j - last_j, in nats.
  Rote memorization of a string shows as a few tokens that no skill could predict (a key, a
  number) falling from near-uniform to near zero; a sample learned by general skill improves
  evenly, so its largest drops are small. Null without an early and a late presentation with
  token losses.
- `tail-var`: the standard deviation (ddof 0) of `tail_loss` over the presentations with
  epoch >= late_from (default: the second half of the log's epochs, late_from = ceil(E / 2) for
  epochs 0..E-1), in nats. A sample still being pushed down late in training keeps moving; a
  settled one does not. Needs only per-sample values. Null with fewer than 2 late presentations.

All three are label-free: no correctness rule or threshold. Sums are taken in the same fixed point as
the scores (2^-32 nats), so the signals, too, do not depend on file or thread order. A sample with
a null signal gets no quadrant and is never pruned by memorization.
docs/experiment.md compares them with forget events on the experiment's runs.
"""

from __future__ import annotations

import math

import polars as pl

from carto_cli.errors import ChoiceError, LogFormatError, OptionError
from carto_cli.log import schema
from carto_cli.score.fixedpoint import SCALE, fixed_mean, fixed_sum

SIGNALS = ("auto", "extractable", "forgets", "token-drop", "tail-var")
# The log columns each signal besides forget events reads.
SIGNAL_COLUMNS = {
    "extractable": schema.SKETCH_COLUMNS,
    "token-drop": (schema.TOKEN_LOSS,),
    "tail-var": (schema.TAIL_LOSS,),
}


def resolve(signal: str, has_sketch: bool) -> str:
    """`auto` -> `extractable` when the log has the sketch columns (not all null), else `forgets`."""
    if signal != "auto":
        return signal
    return "extractable" if has_sketch else "forgets"


def describe(signal: str, *, drop_k: int, early_epochs: int, late_from: int | None) -> str:
    """One line saying what the memorization column holds."""
    if signal == "forgets":
        return "forget events / transitions"
    if signal == "extractable":
        return (f"largest early loss (epochs < {early_epochs}) in one run of greedy hits at the last "
                "presentation (nats)")
    if signal == "token-drop":
        return (f"mean of the {drop_k} largest per-token loss drops, epochs < {early_epochs} "
                "to the last presentation (nats)")
    return f"std of tail_loss over epochs >= {late_from} (nats)"


def late_from_default(max_epoch: int) -> int:
    """The first epoch of the second half of epochs 0..max_epoch."""
    return math.ceil((max_epoch + 1) / 2)


def check_options(signal: str, drop_k: int, late_from: int | None) -> None:
    if signal not in SIGNALS:
        raise ChoiceError(f"--memorization must be one of {', '.join(SIGNALS)}; got '{signal}'")
    if drop_k < 1:
        raise OptionError(f"--drop-k must be >= 1; got {drop_k}")
    if late_from is not None and late_from < 0:
        raise OptionError(f"--late-from must be >= 0; got {late_from}")


def signal_frame(lf: pl.LazyFrame, signal: str, *, early_epochs: int, drop_k: int, late_from: int) -> pl.DataFrame:
    """sample_id -> `value` (Float64, null where undefined) for every sample in `lf`.

    `lf` has sample_id, epoch, step and the signal's column (rows with a non-finite loss already
    dropped by the caller, as for the scores).
    """
    if signal == "extractable":
        return extractable(lf, early_epochs=early_epochs)
    if signal == "token-drop":
        return token_drop(lf, early_epochs=early_epochs, drop_k=drop_k)
    if signal == "tail-var":
        return tail_variability(lf, late_from=late_from)
    raise ValueError(f"not a column signal: {signal}")


def extractable(lf: pl.LazyFrame, *, early_epochs: int) -> pl.DataFrame:
    sid, pos, loss, runs = schema.SAMPLE_ID, schema.TOP_POS, schema.TOP_LOSS, schema.HIT_RUNS
    early_rows = lf.filter(pl.col(pos).is_not_null() & pl.col(loss).is_not_null()
                           & (pl.col(schema.EPOCH) < early_epochs))
    n_early = early_rows.group_by(sid).agg(pl.len().alias("n_early"))
    # per (sample, position): the sum of its sketched early losses, in fixed point (exact)
    early = (early_rows.select(sid, pos, loss).explode([pos, loss])
             .filter(pl.col(loss).is_finite())
             .group_by(sid, pos).agg(fixed_sum(pl.col(loss)).alias("early")))
    # the last late presentation; of those tied on (step, epoch), the one whose runs compare largest
    last_runs = (lf.filter(pl.col(runs).is_not_null() & (pl.col(schema.EPOCH) >= early_epochs))
                 .group_by(sid).agg(pl.col(runs).sort_by([schema.STEP, schema.EPOCH, runs]).last()))
    spans = (last_runs.select(sid, pl.col(runs).list.gather_every(2).alias("start"),
                              pl.col(runs).list.gather_every(2, offset=1).alias("length"))
             .with_columns(run=pl.int_ranges(pl.col("start").list.len()))
             .explode(["start", "length", "run"])
             .filter(pl.col("length") > 0))
    best = (spans.join(early, on=sid)
            .filter((pl.col(pos) >= pl.col("start")) & (pl.col(pos) < pl.col("start") + pl.col("length")))
            .group_by(sid, "run").agg(pl.col("early").sum())
            .group_by(sid).agg(pl.col("early").max().alias("best")))
    value = pl.col("best").fill_null(0).cast(pl.Float64) / SCALE / pl.col("n_early")
    scored = (last_runs.select(sid).join(n_early, on=sid)  # an early and a late sketched presentation
              .join(best, on=sid, how="left").select(sid, value.alias("value")))
    return lf.select(sid).unique().join(scored, on=sid, how="left").collect()


def token_drop(lf: pl.LazyFrame, *, early_epochs: int, drop_k: int) -> pl.DataFrame:
    sid, losses = schema.SAMPLE_ID, schema.TOKEN_LOSS
    rows = lf.select(sid, schema.EPOCH, schema.STEP, losses).filter(pl.col(losses).is_not_null())
    samples = lf.select(sid).unique()

    def per_position(frame: pl.LazyFrame) -> pl.LazyFrame:
        return (frame.with_columns(pos=pl.int_ranges(pl.col(losses).list.len()))
                .explode([losses, "pos"])
                .filter(pl.col(losses).is_finite()))

    early = (per_position(rows.filter(pl.col(schema.EPOCH) < early_epochs))
             .group_by(sid, "pos").agg(fixed_mean(pl.col(losses)).alias("early")))
    last = (rows.filter(pl.col(schema.EPOCH) >= early_epochs)
            .group_by(sid).agg(pl.col(losses).sort_by([schema.STEP, schema.EPOCH]).last()))
    drops = (early.join(per_position(last), on=[sid, "pos"], how="inner")
             .group_by(sid).agg((pl.col("early") - pl.col(losses)).top_k(drop_k).mean().alias("value")))
    return samples.join(drops, on=sid, how="left").collect()


def tail_variability(lf: pl.LazyFrame, *, late_from: int) -> pl.DataFrame:
    sid, tail = schema.SAMPLE_ID, pl.col(schema.TAIL_LOSS)
    late = lf.filter((pl.col(schema.EPOCH) >= late_from) & tail.is_finite())
    moments = late.group_by(sid).agg(
        pl.len().alias("n"), fixed_mean(tail).alias("m1"), fixed_mean(tail * tail).alias("m2")
    )
    value = pl.when(pl.col("n") >= 2).then((pl.col("m2") - pl.col("m1") ** 2).clip(lower_bound=0).sqrt())
    return lf.select(sid).unique().join(moments.select(sid, value.alias("value")), on=sid, how="left").collect()


def require_column(column: str, first_without: object, signal: str) -> None:
    """A one-line error: the log lacks `column`, which `signal` reads (`first_without`: a part without it)."""
    how = {"token-drop": "log with CartoLogger(token_losses=True)",
           "extractable": "log from logits with the shim's sketch on (the default)"}.get(
        signal, "log with the logits path of the shim")
    raise LogFormatError(
        f"{first_without}: column '{column}' is missing, needed by --memorization {signal}; {how}, "
        "or use --memorization forgets"
    )
