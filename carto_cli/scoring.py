"""Scoring: per-sample difficulty and memorization from logged presentations.

Definitions (GenDataCarto, Patel & Shanbhag 2025, arXiv 2509.00083, after Toneva et al. 2019):

- A *presentation* is one logged row. A sample's presentations are ordered by `step`; ties (the
  same step) by `epoch`, then incorrect before correct, so that a tie never creates a forget event.
  Parts, ranks and file order do not matter.
- *correct* is the per-presentation learned flag: the logged `correct` column (`--correct-from log`),
  or re-derived as `loss < t`, `tail_loss < t` or `token_acc >= t`. A threshold `pNN` is the NN-th
  percentile of that column over every finite logged row.
- **difficulty** d_i: the mean `loss` over the sample's presentations with `epoch < early_epochs`
  (the paper's T_e). Null when the sample has no early presentation.
- **forget_events**: the number of consecutive presentation pairs (correct, then incorrect).
  Always < n_seen.
- **memorization** m_i: forget_events / transitions, with transitions = n_seen - 1 (0 when the
  sample was seen once). In [0, 1] (forget_events <= n_seen // 2); the paper's "forget events
  relative to transitions".
- Never-learned samples (no correct presentation) have no forget event by definition. Peers differ
  on how to rank them, so it is a choice (`never_learned`):
  `zero` (default; DeepCore): m = 0, they were never memorized; they land in the high-difficulty
  quadrants. `max` (Toneva et al., "maximally forgotten"): m = 1.0,
  the largest possible value (tied only with learned samples forgotten at every chance). `exclude`: m = null; such
  samples get no quadrant and are never pruned by memorization.
- Rows whose loss is NaN or infinite are dropped and counted (`nonfinite="drop"`), or refused
  (`nonfinite="error"`).

Two exact implementations of forget_events, chosen per run (`method="auto"`):
- *bitmask* (no sort): when every sample appears at most once per epoch, in consecutive epochs
  below 64, and epochs never go back in step order, a per-sample OR of 2^epoch over correct
  presentations (c) and over all presentations (s) gives forget_events = popcount(c & ~(c>>1) & (s>>1)).
  Samples that break the once-per-epoch or consecutive condition are recounted by the general path.
- *general*: sort by (sample_id, step, epoch, correct) and count (previous correct, this incorrect).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import polars as pl

from carto_cli import schema
from carto_cli.errors import LogFormatError, OptionError
from carto_cli.logs import LogSet, scan

CORRECT_SOURCES = ("log", "loss", "tail", "acc")
NEVER_LEARNED = ("zero", "max", "exclude")
NONFINITE = ("drop", "error")
METHODS = ("auto", "bitmask", "general")

# Which logged column each correctness source reads, and its default threshold.
_RULE_COLUMN = {"loss": schema.LOSS, "tail": schema.TAIL_LOSS, "acc": schema.TOKEN_ACC}
_DEFAULT_THRESHOLD = {"loss": "p50", "tail": "p50", "acc": "0.5"}
_MAX_BITMASK_EPOCHS = 64

# Columns of a scores frame, in order (the quadrant is added by `carto_cli.quadrants`).
SCORE_COLUMNS = (
    "sample_id",
    "difficulty",
    "memorization",
    "forget_events",
    "n_seen",
    "n_correct",
    "ever_learned",
    "first_learned_epoch",
    "mean_loss",
)


@dataclass(frozen=True)
class CorrectnessRule:
    """How a presentation counts as learned. `threshold` is resolved (a number) for derived rules."""

    source: str = "log"
    threshold: float | None = None
    spec: str | None = None  # what the user asked for, e.g. "p50" or "1.5"

    def expr(self) -> pl.Expr:
        if self.source == "log":
            return pl.col(schema.CORRECT)
        column = pl.col(_RULE_COLUMN[self.source])
        if self.source == "acc":
            return column >= self.threshold
        return column < self.threshold

    def describe(self) -> str:
        if self.source == "log":
            return "logged correct"
        op = ">=" if self.source == "acc" else "<"
        spec = f" ({self.spec})" if self.spec and self.spec != str(self.threshold) else ""
        return f"{_RULE_COLUMN[self.source]} {op} {self.threshold:.6g}{spec}"


@dataclass(frozen=True)
class ScoreParams:
    early_epochs: int = 2
    never_learned: str = "zero"
    correct_from: str = "log"
    threshold: str | None = None
    nonfinite: str = "drop"
    method: str = "auto"

    def __post_init__(self) -> None:
        if self.early_epochs < 1:
            raise OptionError(f"--early-epochs must be >= 1, got {self.early_epochs}")
        for name, value, allowed in (
            ("--never-learned", self.never_learned, NEVER_LEARNED),
            ("--correct-from", self.correct_from, CORRECT_SOURCES),
            ("--nonfinite", self.nonfinite, NONFINITE),
            ("--method", self.method, METHODS),
        ):
            if value not in allowed:
                raise OptionError(f"{name} must be one of {', '.join(allowed)}; got '{value}'")
        if self.correct_from == "log" and self.threshold is not None:
            raise OptionError("--threshold applies to --correct-from loss|tail|acc, not log")


@dataclass
class ScoreResult:
    """The per-sample scores plus what a user must be told about how they were obtained."""

    scores: pl.DataFrame
    rule: CorrectnessRule
    rows_used: int
    rows_dropped_nonfinite: int
    method: str  # the implementation that counted forget events
    samples_general: int  # samples recounted by the general path under the bitmask method
    notes: list[str] = field(default_factory=list)


def parse_threshold(spec: str, *, option: str = "--threshold") -> tuple[float | None, float | None]:
    """'p50' -> (None, 0.5) a percentile; '1.5' -> (1.5, None) a value. Raises OptionError."""
    match = re.fullmatch(r"p(\d+(?:\.\d+)?)", spec.strip())
    if match:
        q = float(match.group(1)) / 100
        if not 0 <= q <= 1:
            raise OptionError(f"{option} percentile must be p0..p100; got '{spec}'")
        return None, q
    try:
        value = float(spec)
    except ValueError:
        raise OptionError(f"{option} must be a number or a percentile like p50; got '{spec}'") from None
    if not math.isfinite(value):
        raise OptionError(f"{option} must be finite; got '{spec}'")
    return value, None


def score(logset: LogSet, params: ScoreParams = ScoreParams()) -> ScoreResult:
    """Per-sample scores (one row per sample, sorted by sample_id) of a checked log set."""
    column = _RULE_COLUMN.get(params.correct_from)
    if column is not None and not logset.has_column(column):
        missing = next(p.path for p in logset.parts if column not in p.columns)
        raise LogFormatError(
            f"{missing}: column '{column}' is missing, needed by --correct-from {params.correct_from}; "
            "log with the logits path of the shim, or use --correct-from log"
        )
    needed = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.LOSS, schema.CORRECT]
    if column is not None and column not in needed:
        needed.append(column)
    lf = scan(logset, needed)

    epochs, nonfinite, rule_nulls = _preflight(lf, column)
    if column is not None and rule_nulls:
        raise LogFormatError(
            f"column '{column}' has {rule_nulls} null value(s) in the logs, needed by "
            f"--correct-from {params.correct_from}; use --correct-from log"
        )
    notes = []
    if nonfinite:
        if params.nonfinite == "error":
            raise LogFormatError(
                f"{nonfinite} row(s) have a NaN or infinite loss; fix the logging, "
                "or pass --nonfinite drop to leave them out"
            )
        notes.append(f"dropped {nonfinite} row(s) with a NaN or infinite loss")
        lf = lf.filter(pl.col(schema.LOSS).is_finite())

    rule = _resolve_rule(lf, params)
    lf = lf.with_columns(rule.expr().alias(schema.CORRECT))
    if column is not None:
        # A derived rule on a NaN column value (e.g. token_acc of an empty sample) is not learned.
        lf = lf.with_columns(pl.col(schema.CORRECT).fill_null(False))

    method = params.method
    bitmask_ok, why_not = _bitmask_applies(epochs)
    if method == "bitmask" and not bitmask_ok:
        raise OptionError(f"--method bitmask does not apply to these logs: {why_not}; use --method auto")
    if method == "auto":
        method = "bitmask" if bitmask_ok else "general"

    early = pl.col(schema.EPOCH) < params.early_epochs
    aggregates = [
        pl.len().alias("n_seen"),
        pl.col(schema.CORRECT).sum().alias("n_correct"),
        _exact_mean(pl.col(schema.LOSS).filter(early)).alias("difficulty"),
        _exact_mean(pl.col(schema.LOSS)).alias("mean_loss"),
        pl.col(schema.EPOCH).filter(pl.col(schema.CORRECT)).min().alias("first_learned_epoch"),
    ]
    samples_general = 0
    if method == "bitmask":
        bit = pl.lit(2, dtype=pl.UInt64).pow(pl.col(schema.EPOCH).cast(pl.UInt64))
        per_sample = lf.group_by(schema.SAMPLE_ID).agg(
            *aggregates,
            bit.bitwise_or().alias("_seen"),
            bit.filter(pl.col(schema.CORRECT)).bitwise_or().fill_null(0).alias("_corr"),
            pl.col(schema.EPOCH).min().alias("_emin"),
            pl.col(schema.EPOCH).max().alias("_emax"),
        ).collect()
        seen, corr = pl.col("_seen"), pl.col("_corr")
        simple = (pl.col("n_seen") == seen.bitwise_count_ones()) & (
            seen.bitwise_count_ones() == pl.col("_emax") - pl.col("_emin") + 1
        )
        per_sample = per_sample.with_columns(
            pl.when(simple)
            .then((corr & ~(corr // 2) & (seen // 2)).bitwise_count_ones().cast(pl.Int64))
            .alias("forget_events"),
        )
        irregular = per_sample.filter(pl.col("forget_events").is_null()).select(schema.SAMPLE_ID)
        samples_general = irregular.height
        if samples_general:
            recount = _forget_events_general(lf.join(irregular.lazy(), on=schema.SAMPLE_ID, how="semi"))
            per_sample = per_sample.join(recount.collect(), on=schema.SAMPLE_ID, how="left", suffix="_g")
            per_sample = per_sample.with_columns(
                pl.coalesce("forget_events", "forget_events_g").alias("forget_events")
            )
    else:
        per_sample = (
            lf.group_by(schema.SAMPLE_ID)
            .agg(*aggregates)
            .join(_forget_events_general(lf), on=schema.SAMPLE_ID, how="left")
            .collect()
        )

    scores = per_sample.with_columns(
        pl.col("n_correct").cast(pl.Int64),
        pl.col("n_seen").cast(pl.Int64),
        (pl.col("n_correct") > 0).alias("ever_learned"),
    ).with_columns(memorization=_memorization(params.never_learned))
    scores = scores.select(SCORE_COLUMNS).sort(schema.SAMPLE_ID)
    return ScoreResult(
        scores=scores,
        rule=rule,
        rows_used=int(scores["n_seen"].sum()),
        rows_dropped_nonfinite=nonfinite if params.nonfinite == "drop" else 0,
        method=method,
        samples_general=samples_general,
        notes=notes,
    )


# Losses are summed in fixed point (units of 2^-32 nats, far below float32's resolution) so that a
# mean does not depend on the order in which files, threads and row groups were summed: the same
# logs always give bit-identical scores, and quadrant boundaries never flip on rounding noise.
_FIXED_POINT = 2.0**32


def _exact_mean(values: pl.Expr) -> pl.Expr:
    """Order-independent mean of a float column (null for no values)."""
    total = (values * _FIXED_POINT).round().cast(pl.Int128).sum()
    count = values.count()
    return pl.when(count > 0).then(total.cast(pl.Float64) / _FIXED_POINT / count)


def _memorization(never_learned: str) -> pl.Expr:
    """forget_events / transitions; the never-learned policy decides samples with no correct row."""
    transitions = (pl.col("n_seen") - 1).clip(lower_bound=1)
    rate = pl.col("forget_events") / transitions
    fill = {"zero": pl.lit(0.0), "max": pl.lit(1.0), "exclude": pl.lit(None, dtype=pl.Float64)}
    return pl.when(pl.col("ever_learned")).then(rate).otherwise(fill[never_learned])


def _forget_events_general(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Exact forget events for any presentation order: sort, then count (correct -> incorrect)."""
    ordered = lf.select(schema.SAMPLE_ID, schema.STEP, schema.EPOCH, schema.CORRECT).sort(
        [schema.SAMPLE_ID, schema.STEP, schema.EPOCH, schema.CORRECT]
    )
    prev_correct = pl.col(schema.CORRECT).shift(1)
    same_sample = pl.col(schema.SAMPLE_ID) == pl.col(schema.SAMPLE_ID).shift(1)
    return ordered.with_columns(
        _forget=(same_sample & prev_correct & ~pl.col(schema.CORRECT)).fill_null(False)
    ).group_by(schema.SAMPLE_ID).agg(pl.col("_forget").sum().cast(pl.Int64).alias("forget_events"))


def _preflight(lf: pl.LazyFrame, rule_column: str | None) -> tuple[pl.DataFrame, int, int]:
    """One cheap pass: per-epoch step ranges, non-finite loss count, nulls in the rule column."""
    aggs = [
        pl.col(schema.STEP).min().alias("min_step"),
        pl.col(schema.STEP).max().alias("max_step"),
        (~pl.col(schema.LOSS).is_finite()).sum().alias("nonfinite"),
    ]
    if rule_column is not None:
        aggs.append(pl.col(rule_column).is_null().sum().alias("rule_nulls"))
    epochs = lf.group_by(schema.EPOCH).agg(aggs).collect().sort(schema.EPOCH)
    nonfinite = int(epochs["nonfinite"].sum())
    rule_nulls = int(epochs["rule_nulls"].sum()) if rule_column is not None else 0
    return epochs, nonfinite, rule_nulls


def _bitmask_applies(epochs: pl.DataFrame) -> tuple[bool, str]:
    """Whether epoch order is step order and epochs fit a 64-bit mask (per-sample checks come later)."""
    if epochs.height == 0:
        return True, ""
    lo, hi = epochs[schema.EPOCH].min(), epochs[schema.EPOCH].max()
    if lo < 0 or hi >= _MAX_BITMASK_EPOCHS:
        return False, f"epochs span {lo}..{hi}, outside 0..{_MAX_BITMASK_EPOCHS - 1}"
    max_steps = epochs["max_step"].to_list()
    min_steps = epochs["min_step"].to_list()
    for i in range(len(max_steps) - 1):
        if max_steps[i] > min_steps[i + 1]:
            e0, e1 = epochs[schema.EPOCH][i], epochs[schema.EPOCH][i + 1]
            return False, f"steps of epoch {e0} and epoch {e1} overlap"
    return True, ""


def _resolve_rule(lf: pl.LazyFrame, params: ScoreParams) -> CorrectnessRule:
    if params.correct_from == "log":
        return CorrectnessRule("log")
    spec = params.threshold or _DEFAULT_THRESHOLD[params.correct_from]
    value, quantile = parse_threshold(spec)
    if quantile is not None:
        column = pl.col(_RULE_COLUMN[params.correct_from])
        value = (
            lf.select(column.filter(column.is_finite()).quantile(quantile, interpolation="nearest"))
            .collect()
            .item()
        )
        if value is None:
            raise LogFormatError(
                f"column '{_RULE_COLUMN[params.correct_from]}' has no finite value to take "
                f"the percentile {spec} of; give --threshold as a number"
            )
    return CorrectnessRule(params.correct_from, float(value), spec)
