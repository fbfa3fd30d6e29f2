"""Per-sample state: difficulty, memorization and Dataset Cartography's coordinates from logged presentations.

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

Dataset Cartography's coordinates (Swayamdipta et al., EMNLP 2020, allenai/cartography), with the
probability of the gold label replaced by p = exp(-loss): for a generative sample whose `loss` is
its mean token negative log-likelihood, p is the geometric mean of its target tokens' probabilities.

- **confidence**: the mean of p over the sample's presentations (all epochs).
- **variability**: the population standard deviation (ddof 0, as allenai/cartography's `np.std`)
  of p over the same presentations; 0 for a sample seen once.
- **correctness**: n_correct / n_seen, the share of presentations counted correct.
- p is held in fixed point, PROB_SCALE units per probability 1 (`prob_units`): the state keeps
  the sums of the units and of their squares (exact integers), so the variance of the rounded
  values, (n * sum(u^2) - sum(u)^2) / n^2, is exact and order-free; only the final division and
  square root are floating point. Each p is within 3.5e-10 of exp(-loss): half a unit (2^-32),
  the loss's own rounding to 2^-32 nats (at most 2^-33 in p) and the table's error (below 1e-13);
  a mean, and a standard deviation, move by at most as much as the values do, so confidence and
  variability are within 3.5e-10 of the float64 mean and `np.std` of exp(-loss) over the raw
  rows. A negative loss (not a negative log-likelihood) counts as p = 1.

Two exact Polars kernels of forget_events, chosen per run (`method="auto"`):
- *bitmask* (no sort): when every sample appears at most once per epoch, in consecutive epochs
  below 64, and epochs never go back in step order, a per-sample sum of 2^epoch over correct
  presentations (c) and over all presentations (s) gives forget_events = popcount(c & ~(c>>1) & (s>>1)).
  Samples that break the once-per-epoch or consecutive condition are recounted by the general path.
- *general*: sort by (sample_id, step, epoch, correct) and count (previous correct, this incorrect).

Both reduce rows to a per-sample *state* that is associative in time (`merge_states`), so that a
log can be reduced in slices of samples (passes, buckets, Ray tasks) or in slices of time (`--update`).
"""


from __future__ import annotations

import functools
from decimal import Decimal, localcontext

import numpy as np
import polars as pl

from carto_cli.errors import LogFormatError
from carto_cli.log import schema
from carto_cli.score.fixedpoint import SCALE, fixed_sum

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
    "confidence",
    "variability",
    "correctness",
)

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
    "prob_sum",  # sum of p in units of 1/PROB_SCALE (p = exp(-loss), see `prob_units`)
    "prob_sq_hi",  # sum of squared units = prob_sq_hi * SQ_SPLIT + prob_sq_lo, 0 <= prob_sq_lo < SQ_SPLIT
    "prob_sq_lo",
)

# Losses are summed in fixed point (carto_cli.score.fixedpoint): bit-identical scores in any order.
MAX_ABS_LOSS = 1e9

# ----------------------------------------------------------------------------- p = exp(-loss)
#
# p is computed from the fixed-point loss L = round(loss * 2^32) (what `loss_sum` adds) with
# additions and multiplications only, so that numpy (the dense kernel) and Polars (the other
# kernels) give the same bits on every machine (an `exp` from a maths library may differ in the
# last bit between libraries and CPUs): L is clipped to [0, 32 nats], split into steps of 2^-10
# nats, j = L >> 22, and a remainder r = L mod 2^22 (units of 2^-32 nats); then
# p * PROB_SCALE = prob_table()[j] * exp(-r 2^-32), the table built once, exactly (`decimal`),
# and exp(-t) for t < 2^-10 by its Taylor polynomial of degree 3 (relative error < 4e-14).
# A loss beyond 32 nats gives p * 2^31 < 1e-4: 0 units.

PROB_SCALE = 2**31  # units per probability 1: a unit squared fits an int64 (2^62)
SQ_SPLIT = 2**31  # the sum of squared units is kept as two int64 columns, high and low part
_STEP_BITS = 22  # 2^22 units of 2^-32 nats = 2^-10 nats per table step
_MAX_FIXED_LOSS = (32 << 32) - 1  # 32 nats, in units of 2^-32 nats


@functools.cache
def prob_table() -> np.ndarray:
    """exp(-j / 1024) * PROB_SCALE for every table step j up to 32 nats, correctly rounded to
    float64, the same on every machine: j = 1024 a + 32 b + c, the three factors exp(-a), exp(-b/32)
    and exp(-c/1024) to 128 bits in `decimal`, their product in integers, one rounding at the end.
    Built on first use (about 15 ms)."""
    bits = 128
    with localcontext() as ctx:
        ctx.prec = 60  # digits: beyond 2^-128

        def fixed_exp(steps: int) -> int:
            return int((Decimal(-steps) / 1024).exp() * Decimal(2) ** bits)

        factors = [[fixed_exp(n << shift) for n in range(32)] for shift in (10, 5, 0)]
    scale = 2 ** (3 * bits) // PROB_SCALE
    pairs = [a * b for a in factors[0] for b in factors[1]]
    return np.array([ab * c / scale for ab in pairs for c in factors[2]])  # int / int: correctly rounded


# exp(-r / 2^32) = 1 + C1 r + C2 r^2 + C3 r^3, evaluated as ((C3 r + C2) r + C1) r + 1
_C1, _C2, _C3 = -(2.0**-32), 2.0**-65, -(2.0**-96) / 6


def prob_units_parameters() -> tuple[int, int, float, float, float]:
    """(step bits, largest fixed-point loss, C1, C2, C3) of `prob_units`, for its compiled copy
    (`carto_cli.score.compiled`), which must give the same bits."""
    return _STEP_BITS, _MAX_FIXED_LOSS, _C1, _C2, _C3


def prob_units(fixed_loss: np.ndarray) -> np.ndarray:
    """round(exp(-loss) * PROB_SCALE) as int64, from the fixed-point losses round(loss * 2^32)."""
    clipped = np.clip(fixed_loss, 0, _MAX_FIXED_LOSS)
    r = (clipped & ((1 << _STEP_BITS) - 1)).astype(np.float64)
    poly = r * _C3
    poly += _C2
    poly *= r
    poly += _C1
    poly *= r
    poly += 1.0
    poly *= prob_table()[clipped >> _STEP_BITS]
    return np.rint(poly, out=poly).astype(np.int64)


def prob_units_expr(loss: pl.Expr) -> pl.Expr:
    """`prob_units` as a Polars expression over a loss column: the same operations, the same bits."""
    clipped = (loss * SCALE).round().cast(pl.Int64).clip(0, _MAX_FIXED_LOSS)
    r = (clipped % (1 << _STEP_BITS)).cast(pl.Float64)
    poly = ((r * _C3 + _C2) * r + _C1) * r + 1.0
    table = pl.lit(pl.Series("prob_table", prob_table()))
    return (poly * table.gather(clipped // (1 << _STEP_BITS))).round().cast(pl.Int64)


def prob_aggregations(units: pl.Expr) -> list[pl.Expr]:
    """The state's sums of p (`units`: `prob_units_expr`) and of its square (split, not normalised)."""
    square = units * units
    return [units.sum().alias("prob_sum"), (square // SQ_SPLIT).sum().alias("prob_sq_hi"),
            (square % SQ_SPLIT).sum().alias("prob_sq_lo")]


def normalized_square() -> list[pl.Expr]:
    """prob_sq_hi and prob_sq_lo with the low part carried into the high one (0 <= low < SQ_SPLIT),
    so that every kernel and every merge stores the same sum the same way."""
    low = pl.col("prob_sq_lo")
    return [(pl.col("prob_sq_hi") + low // SQ_SPLIT).alias("prob_sq_hi"), (low % SQ_SPLIT).alias("prob_sq_lo")]


def segment_state(lf: pl.LazyFrame, *, early_epochs: int, method: str) -> tuple[pl.DataFrame, int]:
    """One row of state per sample of the segment, and how many samples the general path counted."""
    early = pl.col(schema.EPOCH) < early_epochs
    correct = pl.col(schema.CORRECT)
    lf = lf.with_columns(prob_units_expr(pl.col(schema.LOSS)).alias("_p"))
    prob = prob_aggregations(pl.col("_p"))
    # null where a sample's sum overflows Int64 (`_sums_in_range` then says so)
    loss_sums = [fixed_sum(pl.col(schema.LOSS), strict=False).alias("loss_sum"),
                 fixed_sum(pl.when(early).then(pl.col(schema.LOSS)), strict=False).alias("early_sum")]
    # `when/then` rather than `filter` inside aggregations: Polars evaluates it without
    # materialising a filtered copy per group (about 2x faster over 40M rows).
    order_free = [
        pl.len().cast(pl.Int64).alias("n_seen"),
        correct.sum().cast(pl.Int64).alias("n_correct"),
        early.sum().cast(pl.Int64).alias("n_early"),
        *loss_sums,
        pl.when(correct).then(pl.col(schema.EPOCH)).min().cast(pl.Int64).alias("first_learned_epoch"),
        *prob,
    ]
    if method == "general":
        state = _general_state(lf, order_free).collect().with_columns(normalized_square())
        return _sums_in_range(state).select(STATE_COLUMNS), 0

    # s = sum of 2^epoch over the sample's rows, c = the same over its correct rows. With at most one
    # row per epoch a sum is an OR; a repeated epoch carries, so popcount(s) < n_seen flags it.
    # Everything else order-free that the state needs is read off the two masks.
    bit = power_of_two(pl.col(schema.EPOCH))
    state = lf.group_by(schema.SAMPLE_ID).agg(
        pl.len().cast(pl.Int64).alias("n_seen"),
        *loss_sums,
        bit.sum().alias("_seen"),
        (bit * correct.cast(pl.UInt64)).sum().alias("_corr"),
        pl.col(schema.STEP).min().cast(pl.Int64).alias("first_step"),
        pl.col(schema.STEP).max().cast(pl.Int64).alias("last_step"),
        *prob,
    ).collect().with_columns(normalized_square())
    _sums_in_range(state)
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
        return (corr // power_of_two(pl.col(epoch))) % 2 == 1

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
                           recount.collect().with_columns(normalized_square()).select(STATE_COLUMNS)])
    return state.select(STATE_COLUMNS), irregular.height


def _sums_in_range(state: pl.DataFrame) -> pl.DataFrame:
    """`state`, or a one-line error naming the column and the fix where a sample's fixed-point loss
    sum overflowed Int64 (null from `fixed_sum(strict=False)`): its losses add up beyond about
    2.1e9 nats, which a per-sample mean loss never does."""
    if not (state["loss_sum"].null_count() or state["early_sum"].null_count()):
        return state  # (a null count is kept with the column: no pass over the samples)
    overflowed = state.filter(pl.col("loss_sum").is_null() | pl.col("early_sum").is_null())
    if overflowed.height:
        raise LogFormatError(
            f"column 'loss': the losses of {overflowed.height:,} sample(s) (sample_id "
            f"{overflowed[schema.SAMPLE_ID][0]}, ...) add up beyond what carto sums exactly (about 2.1e9 "
            "nats a sample); carto expects a per-sample mean negative log-likelihood in nats: check what "
            "the training loop logs"
        )
    return state


def power_of_two(exponent: pl.Expr) -> pl.Expr:
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
    sums = ("n_seen", "n_correct", "n_early", "loss_sum", "early_sum", "prob_sum", "prob_sq_hi", "prob_sq_lo")
    return joined.select(
        schema.SAMPLE_ID,
        *(add(c).alias(c) for c in sums),
        pl.min_horizontal("first_learned_epoch", "first_learned_epoch_b").alias("first_learned_epoch"),
        *(pick(c, prefer_later=False) for c in ("first_step", "first_epoch", "first_correct")),
        *(pick(c, prefer_later=True) for c in ("last_step", "last_epoch", "last_correct")),
        (add("forget_events") + boundary).alias("forget_events"),
    ).with_columns(normalized_square()).select(STATE_COLUMNS)


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
            confidence=pl.col("prob_sum").cast(pl.Float64) / PROB_SCALE / pl.col("n_seen"),
            variability=_variability(),
            correctness=pl.col("n_correct") / pl.col("n_seen"),
        )
        .with_columns(memorization=_memorization(never_learned))
        .select(SCORE_COLUMNS)
        .sort(schema.SAMPLE_ID)
        .collect()
    )


def _variability() -> pl.Expr:
    """The population standard deviation of p, from the exact sums: with u = p * PROB_SCALE,
    n^2 Var(u) = n sum(u^2) - sum(u)^2, an exact integer (Int128: below n^2 2^62), then one
    conversion to float64, a square root and a division."""
    n = pl.col("n_seen").cast(pl.Int128)
    square_sum = pl.col("prob_sq_hi").cast(pl.Int128) * SQ_SPLIT + pl.col("prob_sq_lo")
    total = pl.col("prob_sum").cast(pl.Int128)
    scaled_variance = n * square_sum - total * total
    return scaled_variance.cast(pl.Float64).sqrt() / pl.col("n_seen") / PROB_SCALE


def _memorization(never_learned: str) -> pl.Expr:
    """forget_events / transitions; the never-learned policy decides samples with no correct row."""
    transitions = (pl.col("n_seen") - 1).clip(lower_bound=1)
    rate = pl.col("forget_events") / transitions
    fill = {"zero": pl.lit(0.0), "max": pl.lit(1.0), "exclude": pl.lit(None, dtype=pl.Float64)}
    return pl.when(pl.col("ever_learned")).then(rate).otherwise(fill[never_learned])
