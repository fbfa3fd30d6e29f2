"""Correctness rules and scoring parameters: how a presentation counts as learned, and the options
of `carto score` as plain data (validated on construction).

See `carto_cli.score.state` for the definitions the parameters feed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import polars as pl

from carto_cli.errors import ChoiceError, OptionError
from carto_cli.log import schema
from carto_cli.score import signals

CORRECT_SOURCES = ("log", "loss", "tail", "acc")
NEVER_LEARNED = ("zero", "max", "exclude")
NONFINITE = ("drop", "error")
METHODS = ("auto", "bitmask", "general")

# Which logged column each correctness source reads, and its default threshold.
RULE_COLUMN = {"loss": schema.LOSS, "tail": schema.TAIL_LOSS, "acc": schema.TOKEN_ACC}
DEFAULT_THRESHOLD = {"loss": "p50", "tail": "p50", "acc": "0.5"}


@dataclass(frozen=True)
class CorrectnessRule:
    """How a presentation counts as learned. `threshold` is resolved (a number) for derived rules."""

    source: str = "log"
    threshold: float | None = None
    spec: str | None = None  # what the user asked for, e.g. "p50" or "1.5"

    def expr(self) -> pl.Expr:
        if self.source == "log":
            return pl.col(schema.CORRECT)
        column = pl.col(RULE_COLUMN[self.source])
        passed = column >= self.threshold if self.source == "acc" else column < self.threshold
        return passed & column.is_not_nan()  # Polars orders NaN above every number: never learned

    @property
    def column(self) -> str:
        """The logged column the rule reads."""
        return schema.CORRECT if self.source == "log" else RULE_COLUMN[self.source]

    def describe(self) -> str:
        if self.source == "log":
            return "logged correct"
        op = ">=" if self.source == "acc" else "<"
        spec = f" ({self.spec})" if self.spec and self.spec != str(self.threshold) else ""
        return f"{RULE_COLUMN[self.source]} {op} {self.threshold:.6g}{spec}"


@dataclass(frozen=True)
class ScoreParams:
    early_epochs: int = 2
    never_learned: str = "zero"
    correct_from: str = "log"
    threshold: str | None = None
    nonfinite: str = "drop"
    method: str = "auto"
    memorization: str = "auto"  # a signal of `carto_cli.score.signals`; auto: extractable if logged, else forgets
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
                raise ChoiceError(f"{name} must be one of {', '.join(allowed)}; got '{value}'")
        if self.correct_from == "log" and self.threshold is not None:
            raise OptionError("--threshold applies to --correct-from loss|tail|acc, not log")



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




def fixed_rule(params: ScoreParams) -> CorrectnessRule | None:
    """The rule when it does not depend on the data; None for a percentile threshold."""
    if params.correct_from == "log":
        return CorrectnessRule("log")
    spec = params.threshold or DEFAULT_THRESHOLD[params.correct_from]
    value, _ = parse_threshold(spec)
    return None if value is None else CorrectnessRule(params.correct_from, value, spec)
