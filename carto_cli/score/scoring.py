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
  quadrants. `max` (Toneva et al., "maximally forgotten"): m = 1.0, the largest possible value
  (tied only with learned samples forgotten at every chance). `exclude`: m = null; such samples
  get no quadrant and are never pruned by memorization.
- `memorization` can instead hold a label-free signal (`memorization_signal` token-drop or
  tail-var, see `carto_cli.score.signals`); forget_events is then still reported beside it.
- Rows whose loss is NaN or infinite are dropped and counted (`nonfinite="drop"`), or refused
  (`nonfinite="error"`).

Two exact implementations of forget_events, chosen per run (`method="auto"`):
- *bitmask* (no sort): when every sample appears at most once per epoch, in consecutive epochs
  below 64, and epochs never go back in step order, a per-sample sum of 2^epoch over correct
  presentations (c) and over all presentations (s) gives forget_events = popcount(c & ~(c>>1) & (s>>1)).
  Samples that break the once-per-epoch or consecutive condition are recounted by the general path.
- *general*: sort by (sample_id, step, epoch, correct) and count (previous correct, this incorrect).

Both reduce rows to a per-sample *state* that is associative in time (`merge_states`), so that a
log can be reduced in slices of samples (passes, buckets, Ray tasks) or in slices of time (`--update`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from carto_cli.errors import LogFormatError, OptionError
from carto_cli.io.logs import LogPart, LogSet, sample_id_dtype, scan, scan_paths
from carto_cli.log import schema
from carto_cli.score import dense, signals
from carto_cli.score.fixedpoint import SCALE, fixed_sum

CORRECT_SOURCES = ("log", "loss", "tail", "acc")
NEVER_LEARNED = ("zero", "max", "exclude")
NONFINITE = ("drop", "error")
METHODS = ("auto", "bitmask", "general")

# Which logged column each correctness source reads, and its default threshold.
_RULE_COLUMN = {"loss": schema.LOSS, "tail": schema.TAIL_LOSS, "acc": schema.TOKEN_ACC}
_DEFAULT_THRESHOLD = {"loss": "p50", "tail": "p50", "acc": "0.5"}
_MAX_BITMASK_EPOCHS = 64

# Columns of a scores frame, in order (the quadrant is added by `carto_cli.score.quadrants`).
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
        passed = column >= self.threshold if self.source == "acc" else column < self.threshold
        return passed & column.is_not_nan()  # Polars orders NaN above every number: never learned

    @property
    def column(self) -> str:
        """The logged column the rule reads."""
        return schema.CORRECT if self.source == "log" else _RULE_COLUMN[self.source]

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
    memorization: str = "forgets"  # or a signal of `carto_cli.score.signals`
    drop_k: int = 4  # token-drop: how many of the largest per-token drops are averaged
    late_from: int | None = None  # tail-var: first late epoch (None: the second half of the epochs)

    def __post_init__(self) -> None:
        if self.early_epochs < 1:
            raise OptionError(f"--early-epochs must be >= 1, got {self.early_epochs}")
        signals.check_options(self.memorization, self.drop_k, self.late_from)
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
    memorization: str = "forget events / transitions"  # what the memorization column holds


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


# An unbucketed log is reduced in ceil(rows / ROWS_PER_PASS) passes over disjoint sample slices:
# on the 40M-row benchmark, 4 passes cut peak memory from 4.5 to 3.1 GB at the same speed.
ROWS_PER_PASS = 10_000_000


@dataclass(frozen=True)
class Kernel:
    """Everything needed to reduce any subset of a log's parts to per-sample state.

    Plain data, so that an engine can ship it to a worker (see `carto_cli.engines.ray`).
    """

    rule: CorrectnessRule
    early_epochs: int
    method: str  # "bitmask" or "general"; "dense" once the dense kernel (carto_cli.score.dense) reduced the log
    drop_nonfinite: bool
    sample_id_dtype: str  # "Int64" or "UInt64"

    def frame(self, paths: list[str]) -> pl.LazyFrame:
        """sample_id, epoch, step, loss, correct (the rule applied) of the parts at `paths`."""
        columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.LOSS, schema.CORRECT]
        if self.rule.source != "log":
            columns.append(_RULE_COLUMN[self.rule.source])
        lf = scan_paths(paths, columns, sample_id_dtype=getattr(pl, self.sample_id_dtype))
        if self.drop_nonfinite:
            lf = lf.filter(pl.col(schema.LOSS).is_finite())
        return lf.with_columns(self.rule.expr().alias(schema.CORRECT)).select(columns[:5])

    def state(self, paths: list[str], *, passes: int = 1) -> tuple[pl.DataFrame, int]:
        """Per-sample state of the parts at `paths`, and how many samples the general path counted.

        With `passes` > 1 the samples are reduced in that many passes over disjoint slices
        (sample_id mod passes), each reading the parts again: the aggregation's hash table holds
        1/passes of the samples at a time, which bounds memory at little cost in time.
        """
        if passes == 1:
            return segment_state(self.frame(paths), early_epochs=self.early_epochs, method=self.method)
        states, general = [], 0
        for p in range(passes):
            frame = self.frame(paths).filter(pl.col(schema.SAMPLE_ID) % passes == p)
            state, g = segment_state(frame, early_epochs=self.early_epochs, method=self.method)
            states.append(state)
            general += g
        return pl.concat(states), general


def full_state(kernel: Kernel, parts: list[LogPart], *, dense_ok: bool = True) -> tuple[pl.DataFrame, int]:
    """Every state column (STATE_COLUMNS) of `parts`, as `--update` saves it, and how many samples
    the general path counted: the dense kernel where it applies (and `dense_ok`, i.e. no method
    forced), else `Kernel.state` in passes of ROWS_PER_PASS rows."""
    logset = LogSet(parts)
    if dense_ok and kernel.method == "bitmask":
        reduced = _dense_state(logset, kernel, full=True)
        if reduced is not None:
            return reduced[0], reduced[1]
    return kernel.state([str(p.path) for p in parts], passes=_passes(logset))


@dataclass(frozen=True)
class Bucket:
    """What one bucket's reduction returns (see `bucket_state`)."""

    state: pl.DataFrame  # the columns `finalize` needs
    samples_general: int  # samples the general path counted
    dense: bool  # whether the dense kernel ran
    signal: pl.DataFrame | None  # sample_id -> value of a memorization signal, when one was asked for


def bucket_state(kernel: Kernel, parts: list[LogPart], *, stride: int = 1,
                 signal: tuple[Plan, ScoreParams] | None = None) -> Bucket:
    """Reduce one bucket (parts holding disjoint samples, every id = b mod `stride`): the dense
    kernel where it applies, else `kernel.state`; stride 0 for no dense kernel (a method the user
    forced). With `signal` (the whole log's plan and the parameters), the bucket's values of the
    memorization signal too."""
    values = signal_values(parts, *signal) if signal is not None else None
    if kernel.method == "bitmask" and stride > 0:
        reduced = _dense_state(LogSet(parts), kernel, stride=stride)
        if reduced is not None:
            return Bucket(reduced[0], reduced[1], True, values)
    state, general = kernel.state([str(p.path) for p in parts])
    return Bucket(state, general, False, values)


@dataclass
class Plan:
    """What `prepare` decided about a log set, and what the user must be told about it."""

    kernel: Kernel
    rows_dropped_nonfinite: int = 0
    notes: list[str] = field(default_factory=list)
    late_from: int | None = None  # tail-var's first late epoch, resolved from the log
    memorization: str = "forget events / transitions"


def score(logset: LogSet, params: ScoreParams = ScoreParams()) -> ScoreResult:
    """Per-sample scores (one row per sample, sorted by sample_id) of a checked log set."""
    fast, dense_declined = _score_from_footers(logset, params)
    if fast is not None:
        return fast
    plan = prepare(logset, params)
    reduced = None
    if params.method == "auto" and plan.kernel.method == "bitmask" and not dense_declined:
        reduced = _dense_state(logset, plan.kernel)
        if reduced is not None:
            plan.kernel = replace(plan.kernel, method="dense")
            reduced = reduced[:2]  # the non-finite rows were counted by prepare
    if reduced is None:
        reduced = plan.kernel.state([str(p.path) for p in logset.parts], passes=_passes(logset))
    state, samples_general = reduced
    result = finish(state, plan, params, samples_general)
    if params.memorization != "forgets":
        result.scores = with_signal(result.scores, signal_values(logset.parts, plan, params))
    return result


def _score_from_footers(logset: LogSet, params: ScoreParams) -> tuple[ScoreResult | None, bool]:
    """The common case without `prepare`'s pass over the data: when the Parquet footers show that
    the bitmask method applies (one epoch per row group, epochs in step order) and the rule needs no
    percentile, the dense kernel runs straight away, dropping and counting non-finite losses
    itself. Returns (scores, False), or (None, whether the dense kernel ran and declined, so that
    `score`'s full path does not run it again over the same rows).
    """
    if params.method != "auto" or params.memorization != "forgets":
        return None, False
    rule = fixed_rule(params)
    column = _RULE_COLUMN.get(params.correct_from)
    if rule is None or (column is not None and any(p.null_counts.get(column) != 0 for p in logset.parts)):
        return None, False  # a percentile to take, or a missing column or nulls for `prepare` to report
    facts = _footer_facts(logset)
    if facts is None:
        return None, False
    epochs, max_abs_loss = facts
    if max_abs_loss > _MAX_ABS_LOSS or not _bitmask_applies(epochs)[0]:
        return None, False
    kernel = Kernel(rule=rule, early_epochs=params.early_epochs, method="bitmask", drop_nonfinite=True,
                    sample_id_dtype=str(sample_id_dtype(logset.parts)))
    reduced = _dense_state(logset, kernel)
    if reduced is None:
        return None, True
    state, samples_general, dropped = reduced
    notes = []
    if dropped:
        if params.nonfinite == "error":
            raise LogFormatError(_nonfinite_message(dropped))
        notes.append(f"dropped {dropped} row(s) with a NaN or infinite loss")
    plan = Plan(replace(kernel, method="dense"), dropped, notes,
                memorization=signals.describe("forgets", drop_k=params.drop_k, early_epochs=params.early_epochs,
                                              late_from=None))
    return finish(state, plan, params, samples_general), False


def _footer_facts(logset: LogSet) -> tuple[pl.DataFrame, float] | None:
    """Per-epoch step ranges (as `_preflight` gives them) and the largest |loss|, from row-group
    statistics; None where a row group holds several epochs or lacks statistics."""
    ranges: dict[int, tuple[int, int]] = {}
    max_abs_loss = 0.0
    for part in logset.parts:
        meta = part.footer
        names = part.arrow_schema.names
        columns = [names.index(c) for c in (schema.EPOCH, schema.STEP, schema.LOSS)]
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            if group.num_rows == 0:
                continue
            epoch, step, loss = (group.column(i).statistics for i in columns)
            if any(s is None or not s.has_min_max for s in (epoch, step, loss)) or epoch.min != epoch.max:
                return None
            low, high = ranges.get(epoch.min, (step.min, step.max))
            ranges[epoch.min] = (min(low, step.min), max(high, step.max))
            # NaN is left out of Parquet statistics (the kernel drops and counts it); an infinity is not
            bounds = [abs(x) for x in (loss.min, loss.max) if math.isfinite(x)]
            max_abs_loss = max([max_abs_loss, *bounds])
    order = sorted(ranges)
    return pl.DataFrame({schema.EPOCH: order, "min_step": [ranges[e][0] for e in order],
                         "max_step": [ranges[e][1] for e in order]}), max_abs_loss


def _nonfinite_message(count: int) -> str:
    return (f"{count} row(s) have a NaN or infinite loss; fix the logging, "
            "or pass --nonfinite drop to leave them out")


def _dense_state(logset: LogSet, kernel: Kernel, **options) -> tuple[pl.DataFrame, int, int] | None:
    """`dense.state` over `logset`, the samples it cannot count recounted exactly by the general
    path; `options`: its `stride` and `full`."""
    paths = [str(p.path) for p in logset.parts]

    def recount(sample_ids: pl.Series) -> pl.DataFrame:
        frame = kernel.frame(paths).join(sample_ids.to_frame().lazy(), on=schema.SAMPLE_ID, how="semi")
        return segment_state(frame, early_epochs=kernel.early_epochs, method="general")[0]

    return dense.state(logset, kernel, recount, **options)


def _passes(logset: LogSet) -> int:
    """Passes over disjoint sample slices for the Polars kernels: ROWS_PER_PASS rows each, which
    bounds their memory."""
    return max(1, math.ceil(logset.num_rows / ROWS_PER_PASS))


def signal_values(parts: list[LogPart], plan: Plan, params: ScoreParams) -> pl.DataFrame:
    """sample_id -> `value` of the signal `params.memorization` over `parts`, which must hold every
    row of their samples (a whole log, or one bucket of it)."""
    columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.LOSS, signals.SIGNAL_COLUMN[params.memorization]]
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
    scores = finalize(state, never_learned=params.never_learned)
    return ScoreResult(
        scores=scores,
        rule=plan.kernel.rule,
        rows_used=int(scores["n_seen"].sum()),
        rows_dropped_nonfinite=plan.rows_dropped_nonfinite,
        method=plan.kernel.method,
        samples_general=samples_general,
        notes=plan.notes,
        memorization=plan.memorization,
    )


def prepare(logset: LogSet, params: ScoreParams) -> Plan:
    """Check the rule's column, count non-finite losses, resolve the rule, pick the method.

    The checks are one cheap pass over (epoch, step, loss) of every part of `logset`.
    """
    column = _RULE_COLUMN.get(params.correct_from)
    if column is not None and not logset.has_column(column):
        missing = next(p.path for p in logset.parts if column not in p.columns)
        raise LogFormatError(
            f"{missing}: column '{column}' is missing, needed by --correct-from {params.correct_from}; "
            "log with the logits path of the shim, or use --correct-from log"
        )
    signal_column = signals.SIGNAL_COLUMN.get(params.memorization)
    if signal_column is not None:
        signals.require_column(logset.has_column(signal_column),
                               next((p.path for p in logset.parts if signal_column not in p.columns), None),
                               params.memorization)
    needed = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.LOSS, schema.CORRECT]
    if column is not None:
        needed.append(column)
    lf = scan(logset, needed)

    epochs, nonfinite, rule_nulls, max_loss = _preflight(lf, column)
    if column is not None and rule_nulls:
        raise LogFormatError(
            f"column '{column}' has {rule_nulls} null value(s) in the logs, needed by "
            f"--correct-from {params.correct_from}; use --correct-from log"
        )
    if max_loss is not None and max_loss > _MAX_ABS_LOSS:
        raise LogFormatError(
            f"column 'loss' holds values up to {max_loss:.3g}; carto expects a per-sample mean negative "
            f"log-likelihood in nats (|loss| <= {_MAX_ABS_LOSS:.0e}): check what the training loop logs"
        )
    notes = []
    if nonfinite:
        if params.nonfinite == "error":
            raise LogFormatError(_nonfinite_message(nonfinite))
        notes.append(f"dropped {nonfinite} row(s) with a NaN or infinite loss")
        lf = lf.filter(pl.col(schema.LOSS).is_finite())

    method = params.method
    bitmask_ok, why_not = _bitmask_applies(epochs)
    if method == "bitmask" and not bitmask_ok:
        raise OptionError(f"--method bitmask does not apply to these logs: {why_not}; use --method auto")
    if method == "auto":
        method = "bitmask" if bitmask_ok else "general"
    kernel = Kernel(
        rule=_resolve_rule(lf, params),
        early_epochs=params.early_epochs,
        method=method,
        drop_nonfinite=bool(nonfinite),
        sample_id_dtype=str(sample_id_dtype(logset.parts)),
    )
    late_from = None
    if params.memorization == "tail-var":
        max_epoch = int(epochs[schema.EPOCH].max()) if epochs.height else 0
        late_from = params.late_from if params.late_from is not None else signals.late_from_default(max_epoch)
    if signal_column is not None and not scan(logset, [signal_column]).select(
        pl.col(signal_column).is_not_null().any()
    ).collect().item():
        raise LogFormatError(
            f"column '{signal_column}' holds only nulls, needed by --memorization {params.memorization}; "
            "log it, or use --memorization forgets"
        )
    description = signals.describe(params.memorization, drop_k=params.drop_k,
                                   early_epochs=params.early_epochs, late_from=late_from)
    return Plan(kernel, nonfinite if params.nonfinite == "drop" else 0, notes, late_from, description)


# ----------------------------------------------------------------------------- per-sample state
#
# The kernel reduces a *segment* of presentations (any set of rows, e.g. one bucket of samples or
# the parts that arrived since the last run) to one row of state per sample. The state is
# associative in time: `merge_states(earlier, later)` gives exactly the state of the union, so
# buckets can be reduced independently and new parts folded into a saved state.

STATE_COLUMNS = (
    "sample_id",
    "n_seen",
    "n_correct",
    "n_early",
    "loss_sum",  # fixed point, units of 2^-32 nats
    "early_sum",
    "first_learned_epoch",
    "first_step",
    "first_epoch",
    "first_correct",
    "last_step",
    "last_epoch",
    "last_correct",
    "forget_events",
)

# Losses are summed in fixed point (carto_cli.score.fixedpoint): bit-identical scores in any order.
_MAX_ABS_LOSS = 1e9


def segment_state(lf: pl.LazyFrame, *, early_epochs: int, method: str) -> tuple[pl.DataFrame, int]:
    """One row of state per sample of the segment, and how many samples the general path counted."""
    early = pl.col(schema.EPOCH) < early_epochs
    correct = pl.col(schema.CORRECT)
    # `when/then` rather than `filter` inside aggregations: Polars evaluates it without
    # materialising a filtered copy per group (about 2x faster over 40M rows).
    order_free = [
        pl.len().cast(pl.Int64).alias("n_seen"),
        correct.sum().cast(pl.Int64).alias("n_correct"),
        early.sum().cast(pl.Int64).alias("n_early"),
        fixed_sum(pl.col(schema.LOSS)).alias("loss_sum"),
        fixed_sum(pl.when(early).then(pl.col(schema.LOSS))).alias("early_sum"),
        pl.when(correct).then(pl.col(schema.EPOCH)).min().cast(pl.Int64).alias("first_learned_epoch"),
    ]
    if method == "general":
        return _general_state(lf, order_free).collect().select(STATE_COLUMNS), 0

    # s = sum of 2^epoch over the sample's rows, c = the same over its correct rows. With at most one
    # row per epoch a sum is an OR; a repeated epoch carries, so popcount(s) < n_seen flags it.
    # Everything else order-free that the state needs is read off the two masks.
    bit = _power_of_two(pl.col(schema.EPOCH))
    state = lf.group_by(schema.SAMPLE_ID).agg(
        pl.len().cast(pl.Int64).alias("n_seen"),
        fixed_sum(pl.col(schema.LOSS)).alias("loss_sum"),
        fixed_sum(pl.when(early).then(pl.col(schema.LOSS))).alias("early_sum"),
        bit.sum().alias("_seen"),
        (bit * correct.cast(pl.UInt64)).sum().alias("_corr"),
        pl.col(schema.STEP).min().cast(pl.Int64).alias("first_step"),
        pl.col(schema.STEP).max().cast(pl.Int64).alias("last_step"),
    ).collect()
    seen, corr = pl.col("_seen"), pl.col("_corr")
    early_mask = pl.lit((1 << min(early_epochs, 64)) - 1, dtype=pl.UInt64)
    state = state.with_columns(
        first_epoch=seen.bitwise_trailing_zeros().cast(pl.Int64),
        last_epoch=63 - seen.bitwise_leading_zeros().cast(pl.Int64),
        n_correct=corr.bitwise_count_ones().cast(pl.Int64),
        n_early=(seen & early_mask).bitwise_count_ones().cast(pl.Int64),
        first_learned_epoch=pl.when(corr != 0).then(corr.bitwise_trailing_zeros().cast(pl.Int64)),
    )
    # Once per epoch, in consecutive epochs: then epoch order is presentation order (checked
    # globally by _bitmask_applies) and bit e of c is the correctness of the sample's epoch-e row.
    simple = (pl.col("n_seen") == seen.bitwise_count_ones()) & (
        pl.col("n_seen") == pl.col("last_epoch") - pl.col("first_epoch") + 1
    )

    def bit_at(epoch: str) -> pl.Expr:
        return (corr // _power_of_two(pl.col(epoch))) % 2 == 1

    state = state.with_columns(
        pl.when(simple).then((corr & ~(corr // 2) & (seen // 2)).bitwise_count_ones().cast(pl.Int64))
        .alias("forget_events"),
        bit_at("first_epoch").alias("first_correct"),
        bit_at("last_epoch").alias("last_correct"),
    )
    irregular = state.filter(pl.col("forget_events").is_null()).select(schema.SAMPLE_ID)
    if irregular.height:
        recount = _general_state(lf.join(irregular.lazy(), on=schema.SAMPLE_ID, how="semi"), order_free)
        state = pl.concat([state.filter(pl.col("forget_events").is_not_null()).select(STATE_COLUMNS),
                           recount.collect().select(STATE_COLUMNS)])
    return state.select(STATE_COLUMNS), irregular.height


def _power_of_two(exponent: pl.Expr) -> pl.Expr:
    """2^exponent as UInt64 (Polars has no shift operator)."""
    return pl.lit(2, dtype=pl.UInt64).pow(exponent.cast(pl.UInt64))


def _general_state(lf: pl.LazyFrame, order_free: list[pl.Expr]) -> pl.LazyFrame:
    """Exact state for any presentation order: sort, count (correct -> incorrect), take first/last."""
    ordered = lf.sort([schema.SAMPLE_ID, schema.STEP, schema.EPOCH, schema.CORRECT])
    prev_correct = pl.col(schema.CORRECT).shift(1)
    same_sample = pl.col(schema.SAMPLE_ID) == pl.col(schema.SAMPLE_ID).shift(1)
    forget = (same_sample & prev_correct & ~pl.col(schema.CORRECT)).fill_null(False)
    # Rows keep their sorted order inside each group: first()/last() are the first/last presentation.
    return ordered.with_columns(_forget=forget).group_by(schema.SAMPLE_ID).agg(
        *order_free,
        pl.col("_forget").sum().cast(pl.Int64).alias("forget_events"),
        pl.col(schema.STEP).first().cast(pl.Int64).alias("first_step"),
        pl.col(schema.EPOCH).first().cast(pl.Int64).alias("first_epoch"),
        pl.col(schema.CORRECT).first().alias("first_correct"),
        pl.col(schema.STEP).last().cast(pl.Int64).alias("last_step"),
        pl.col(schema.EPOCH).last().cast(pl.Int64).alias("last_epoch"),
        pl.col(schema.CORRECT).last().alias("last_correct"),
    )


def merge_states(earlier: pl.DataFrame, later: pl.DataFrame) -> pl.DataFrame:
    """The state of `earlier` followed by `later`.

    Exact when each sample's presentations in `later` all come after (in presentation order) its
    presentations in `earlier`; raises LogFormatError naming a sample where they do not.
    """
    joined = _aligned(earlier, later)
    if joined is None:
        joined = earlier.join(later, on=schema.SAMPLE_ID, how="full", coalesce=True, suffix="_b")
    both = pl.col("n_seen").is_not_null() & pl.col("n_seen_b").is_not_null()
    last_a = [pl.col("last_step"), pl.col("last_epoch"), pl.col("last_correct").cast(pl.Int8)]
    first_b = [pl.col("first_step_b"), pl.col("first_epoch_b"), pl.col("first_correct_b").cast(pl.Int8)]
    bad = joined.filter(both & _lexicographic_less(first_b, last_a))
    if bad.height:
        row = bad.row(0, named=True)
        raise LogFormatError(
            f"{bad.height} sample(s) have new presentations that do not come after the scored ones "
            f"(e.g. sample_id {row[schema.SAMPLE_ID]}: step {row['first_step_b']} after step "
            f"{row['last_step']}); new parts must continue the run: rescore without --update"
        )

    def add(name: str) -> pl.Expr:
        return pl.col(name).fill_null(0) + pl.col(f"{name}_b").fill_null(0)

    def pick(name: str, prefer_later: bool) -> pl.Expr:
        a, b = pl.col(name), pl.col(f"{name}_b")
        return (pl.coalesce(b, a) if prefer_later else pl.coalesce(a, b)).alias(name)

    boundary = (both & pl.col("last_correct") & ~pl.col("first_correct_b")).cast(pl.Int64)
    return joined.select(
        schema.SAMPLE_ID,
        *(add(c).alias(c) for c in ("n_seen", "n_correct", "n_early", "loss_sum", "early_sum")),
        pl.min_horizontal("first_learned_epoch", "first_learned_epoch_b").alias("first_learned_epoch"),
        *(pick(c, prefer_later=False) for c in ("first_step", "first_epoch", "first_correct")),
        *(pick(c, prefer_later=True) for c in ("last_step", "last_epoch", "last_correct")),
        (add("forget_events") + boundary).alias("forget_events"),
    ).select(STATE_COLUMNS)


def _aligned(earlier: pl.DataFrame, later: pl.DataFrame) -> pl.DataFrame | None:
    """`earlier` beside `later`'s columns (suffixed "_b"), row for row, null where `later` lacks the
    sample: what the full join in `merge_states` gives, without a hash join, when `earlier` holds
    the ids lo..hi in order (a saved state of dense ids) and every id of `later` is among them. A
    row of `later` is placed at position sample_id - lo. None when that does not hold."""
    ids = earlier[schema.SAMPLE_ID]
    if earlier.height == 0 or later.height == 0 or not ids.is_sorted():
        return None
    in_order = earlier.with_columns(pl.col(schema.SAMPLE_ID).set_sorted())  # checked: saves a sort
    if later.height == earlier.height and later[schema.SAMPLE_ID].equals(ids):  # the same samples, in order
        return pl.concat([in_order, later.drop(schema.SAMPLE_ID).rename(lambda c: f"{c}_b")], how="horizontal")
    lo = int(ids[0])
    if int(ids[-1]) - lo + 1 != earlier.height:  # not contiguous (ids are unique)
        return None
    pos = (later[schema.SAMPLE_ID].cast(pl.Int64) - lo).to_numpy()
    if pos.min() < 0 or pos.max() >= earlier.height:
        return None
    present = np.zeros(earlier.height, dtype=bool)
    present[pos] = True
    columns = {}
    for name in later.columns:
        if name == schema.SAMPLE_ID:
            continue
        column = later[name]
        filled = column.fill_null(False if column.dtype == pl.Boolean else 0).to_numpy()
        values = np.zeros(earlier.height, dtype=filled.dtype)
        values[pos] = filled
        keep = present
        if column.null_count():
            keep = present.copy()
            keep[pos] = column.is_not_null().to_numpy()
        series = pl.Series(values).cast(column.dtype)
        columns[f"{name}_b"] = series if keep.all() else series.set(pl.Series(~keep), None)
    return pl.concat([in_order, pl.DataFrame(columns)], how="horizontal")


def _lexicographic_less(left: list[pl.Expr], right: list[pl.Expr]) -> pl.Expr:
    """left < right, comparing the expressions in order."""
    result = pl.lit(False)
    for a, b in reversed(list(zip(left, right))):
        result = (a < b) | ((a == b) & result)
    return result


def finalize(state: pl.DataFrame, *, never_learned: str) -> pl.DataFrame:
    """Scores from state: difficulty, mean loss, memorization (no quadrant yet), sorted by sample_id."""
    return (
        state.lazy()
        .with_columns(
            difficulty=pl.when(pl.col("n_early") > 0).then(
                pl.col("early_sum").cast(pl.Float64) / SCALE / pl.col("n_early")
            ),
            mean_loss=pl.col("loss_sum").cast(pl.Float64) / SCALE / pl.col("n_seen"),
            ever_learned=pl.col("n_correct") > 0,
        )
        .with_columns(memorization=_memorization(never_learned))
        .select(SCORE_COLUMNS)
        .sort(schema.SAMPLE_ID)
        .collect()
    )


def _memorization(never_learned: str) -> pl.Expr:
    """forget_events / transitions; the never-learned policy decides samples with no correct row."""
    transitions = (pl.col("n_seen") - 1).clip(lower_bound=1)
    rate = pl.col("forget_events") / transitions
    fill = {"zero": pl.lit(0.0), "max": pl.lit(1.0), "exclude": pl.lit(None, dtype=pl.Float64)}
    return pl.when(pl.col("ever_learned")).then(rate).otherwise(fill[never_learned])


def _preflight(lf: pl.LazyFrame, rule_column: str | None) -> tuple[pl.DataFrame, int, int, float | None]:
    """One cheap pass: per-epoch step ranges, non-finite and largest losses, rule-column nulls."""
    loss = pl.col(schema.LOSS)
    aggs = [
        pl.col(schema.STEP).min().alias("min_step"),
        pl.col(schema.STEP).max().alias("max_step"),
        (~loss.is_finite()).sum().alias("nonfinite"),
        pl.when(loss.is_finite()).then(loss.abs()).max().alias("max_abs_loss"),
    ]
    if rule_column is not None:
        aggs.append(pl.col(rule_column).is_null().sum().alias("rule_nulls"))
    epochs = lf.group_by(schema.EPOCH).agg(aggs).collect().sort(schema.EPOCH)
    nonfinite = int(epochs["nonfinite"].sum())
    rule_nulls = int(epochs["rule_nulls"].sum()) if rule_column is not None else 0
    return epochs, nonfinite, rule_nulls, epochs["max_abs_loss"].max()


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


def fixed_rule(params: ScoreParams) -> CorrectnessRule | None:
    """The rule when it does not depend on the data; None for a percentile threshold."""
    if params.correct_from == "log":
        return CorrectnessRule("log")
    spec = params.threshold or _DEFAULT_THRESHOLD[params.correct_from]
    value, _ = parse_threshold(spec)
    return None if value is None else CorrectnessRule(params.correct_from, value, spec)


def _resolve_rule(lf: pl.LazyFrame, params: ScoreParams) -> CorrectnessRule:
    """The rule, taking a percentile threshold over every finite value of the rule's column."""
    rule = fixed_rule(params)
    if rule is not None:
        return rule
    name = _RULE_COLUMN[params.correct_from]
    spec = params.threshold or _DEFAULT_THRESHOLD[params.correct_from]
    _, quantile = parse_threshold(spec)
    column = pl.col(name)
    value = lf.select(column.filter(column.is_finite()).quantile(quantile, interpolation="nearest")).collect().item()
    if value is None:
        raise LogFormatError(
            f"column '{name}' has no finite value to take the percentile {spec} of; give --threshold as a number"
        )
    return CorrectnessRule(params.correct_from, float(value), spec)
