"""The planner: how a log is reduced, decided once from the Parquet footers and the options.

`carto score` reads the log through exactly one plan:
- `plan(logset, params)`: when the footers show that the bitmask method applies (each row group
  holds one epoch, epochs in step order, losses in range) and the correctness rule needs no
  percentile, no pass over the data is needed before the kernels run: the plan says to run the
  dense-id kernel (`carto_cli.score.dense`) straight away, which drops and counts non-finite losses
  itself (`Plan.checked` is False). Otherwise `prepare` makes one cheap pass over (epoch, step,
  loss) of every part: it checks the rule's column, counts non-finite losses, resolves a percentile
  threshold and picks the method (bitmask where it applies, else general).
- Which engine runs the plan is `carto_cli.engines.pipeline`'s choice (in memory, bucket by bucket,
  Ray, `--update`); the engines run a `Kernel` (plain data, shippable to a worker) over parts.

Kernels are leaves: the dense kernel and the Polars kernels (`carto_cli.score.state`) take columns
and return per-sample state, and never call back into this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import polars as pl

from carto_cli.errors import LogFormatError, OptionError
from carto_cli.io.logs import LogSet, sample_id_dtype, scan, scan_paths
from carto_cli.log import schema
from carto_cli.score import signals
from carto_cli.score.rules import (
    DEFAULT_THRESHOLD,
    RULE_COLUMN,
    CorrectnessRule,
    ScoreParams,
    fixed_rule,
    parse_threshold,
)
from carto_cli.score.state import MAX_ABS_LOSS, segment_state

MAX_BITMASK_EPOCHS = 64

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
            columns.append(RULE_COLUMN[self.rule.source])
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


@dataclass
class Plan:
    """How a log set is reduced, and what the user must be told about it."""

    kernel: Kernel
    rows_dropped_nonfinite: int = 0
    notes: list[str] = field(default_factory=list)
    late_from: int | None = None  # tail-var's first late epoch, resolved from the log
    memorization: str = "forget events / transitions"
    dense: bool = False  # run the dense-id kernel first (it may decline: then `kernel.state`)
    checked: bool = True  # False: planned from the footers, `prepare`'s pass has not run

    def count_dropped(self, dropped: int, params: ScoreParams) -> None:
        """Record the non-finite rows the dense kernel dropped on a plan made from the footers."""
        if not dropped:
            return
        if params.nonfinite == "error":
            raise LogFormatError(nonfinite_message(dropped))
        self.rows_dropped_nonfinite = dropped
        self.notes.append(f"dropped {dropped} row(s) with a NaN or infinite loss")


def plan(logset: LogSet, params: ScoreParams) -> Plan:
    """The plan for scoring `logset` in one piece: from the footers when they suffice, else `prepare`.
    `params.memorization` must be resolved (`resolve_signal`)."""
    return from_footers(logset, params) or prepare(logset, params)


def resolve_signal(logset: LogSet, params: ScoreParams) -> ScoreParams:
    """`params` with `--memorization auto` decided from the footers: `extractable` when every
    part has the sketch columns with some non-null rows, else `forgets`."""
    if params.memorization != "auto":
        return params
    return replace(params, memorization=signals.resolve("auto", has_sketch(logset)))


def has_sketch(logset: LogSet) -> bool:
    """Whether every part has the sketch columns, not all null (from the footers)."""
    return all(all(c in p.columns and p.null_counts.get(c) != p.num_rows for c in schema.SKETCH_COLUMNS)
               for p in logset.parts)


def from_footers(logset: LogSet, params: ScoreParams) -> Plan | None:
    """The dense kernel with no pass over the data first, when the footers show that the bitmask
    method applies (one epoch per row group, epochs in step order, |loss| in range), the rule
    needs no percentile and the memorization signal needs no checking pass (forget events, or
    the sketch, present in every part); None otherwise."""
    if params.method != "auto" or params.memorization not in ("forgets", "extractable"):
        return None  # token-drop and tail-var: `prepare` checks their column and resolves late_from
    if params.memorization == "extractable" and not has_sketch(logset):
        return None  # `prepare` names the missing column
    rule = fixed_rule(params)
    column = RULE_COLUMN.get(params.correct_from)
    if rule is None or (column is not None and any(p.null_counts.get(column) != 0 for p in logset.parts)):
        return None  # a percentile to take, or a missing column or nulls for `prepare` to report
    facts = _footer_facts(logset)
    if facts is None:
        return None
    epochs, max_abs_loss = facts
    if max_abs_loss > MAX_ABS_LOSS or not _bitmask_applies(epochs)[0]:
        return None
    kernel = Kernel(rule=rule, early_epochs=params.early_epochs, method="bitmask", drop_nonfinite=True,
                    sample_id_dtype=str(sample_id_dtype(logset.parts)))
    memorization = signals.describe(params.memorization, drop_k=params.drop_k, early_epochs=params.early_epochs,
                                    late_from=None)
    return Plan(kernel, memorization=memorization, dense=True, checked=False)


def passes(logset: LogSet) -> int:
    """Passes over disjoint sample slices for the Polars kernels: ROWS_PER_PASS rows each, which
    bounds their memory."""
    return max(1, math.ceil(logset.num_rows / ROWS_PER_PASS))


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


def nonfinite_message(count: int) -> str:
    return (f"{count} row(s) have a NaN or infinite loss; fix the logging, "
            "or pass --nonfinite drop to leave them out")



def prepare(logset: LogSet, params: ScoreParams) -> Plan:
    """Check the rule's column, count non-finite losses, resolve the rule, pick the method.

    The checks are one cheap pass over (epoch, step, loss) of every part of `logset`.
    """
    column = RULE_COLUMN.get(params.correct_from)
    if column is not None and not logset.has_column(column):
        missing = next(p.path for p in logset.parts if column not in p.columns)
        raise LogFormatError(
            f"{missing}: column '{column}' is missing, needed by --correct-from {params.correct_from}; "
            "log with the logits path of the shim, or use --correct-from log"
        )
    for signal_column in signals.SIGNAL_COLUMNS.get(params.memorization, ()):
        if not logset.has_column(signal_column):
            signals.require_column(signal_column, next(p.path for p in logset.parts if signal_column not in p.columns),
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
    if max_loss is not None and max_loss > MAX_ABS_LOSS:
        raise LogFormatError(
            f"{_first_part_over(logset, MAX_ABS_LOSS)}: column 'loss' holds values up to {max_loss:.3g}; carto "
            f"expects a per-sample mean negative log-likelihood in nats (|loss| <= {MAX_ABS_LOSS:.0e}): check what "
            "the training loop logs"
        )
    notes = []
    if nonfinite:
        if params.nonfinite == "error":
            raise LogFormatError(nonfinite_message(nonfinite))
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
    signal_columns = signals.SIGNAL_COLUMNS.get(params.memorization, ())
    if signal_columns and not scan(logset, [signal_columns[0]]).select(
        pl.col(signal_columns[0]).is_not_null().any()
    ).collect().item():
        raise LogFormatError(
            f"column '{signal_columns[0]}' holds only nulls, needed by --memorization {params.memorization}; "
            "log it, or use --memorization forgets"
        )
    description = signals.describe(params.memorization, drop_k=params.drop_k,
                                   early_epochs=params.early_epochs, late_from=late_from)
    dense = params.method == "auto" and method == "bitmask"
    return Plan(kernel, nonfinite if params.nonfinite == "drop" else 0, notes, late_from, description, dense=dense)



def _first_part_over(logset: LogSet, bound: float) -> object:
    """The first part holding a finite |loss| above `bound` (one part read at a time: an error path)."""
    loss = pl.col(schema.LOSS)
    for part in logset.parts:
        lf = scan(LogSet([part]), [schema.LOSS])
        if lf.select((loss.is_finite() & (loss.abs() > bound)).any()).collect().item():
            return part.origin or part.path
    return "the logs"


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
    if lo < 0 or hi >= MAX_BITMASK_EPOCHS:
        return False, f"epochs span {lo}..{hi}, outside 0..{MAX_BITMASK_EPOCHS - 1}"
    max_steps = epochs["max_step"].to_list()
    min_steps = epochs["min_step"].to_list()
    for i in range(len(max_steps) - 1):
        if max_steps[i] > min_steps[i + 1]:
            e0, e1 = epochs[schema.EPOCH][i], epochs[schema.EPOCH][i + 1]
            return False, f"steps of epoch {e0} and epoch {e1} overlap"
    return True, ""




def _resolve_rule(lf: pl.LazyFrame, params: ScoreParams) -> CorrectnessRule:
    """The rule, taking a percentile threshold over every finite value of the rule's column."""
    rule = fixed_rule(params)
    if rule is not None:
        return rule
    name = RULE_COLUMN[params.correct_from]
    spec = params.threshold or DEFAULT_THRESHOLD[params.correct_from]
    _, quantile = parse_threshold(spec)
    column = pl.col(name)
    value = lf.select(column.filter(column.is_finite()).quantile(quantile, interpolation="nearest")).collect().item()
    if value is None:
        raise LogFormatError(
            f"column '{name}' has no finite value to take the percentile {spec} of; give --threshold as a number"
        )
    return CorrectnessRule(params.correct_from, float(value), spec)
