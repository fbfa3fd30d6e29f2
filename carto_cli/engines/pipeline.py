"""`carto score` end to end: reduce the log to per-sample scores (in memory, per bucket, on Ray, or
by folding new parts into a saved state), place the samples in quadrants, write the scores file.

Which reduction runs:
- `update=True`: `incremental.score_update` (local engine, per-sample state held in memory).
- a log that is not bucketed, on the local engine: `local.score`, streamed where the compiled
  dense kernel applies in one pass (`carto_cli.score.streamed`: only its accumulators are held, the
  score columns are made a chunk at a time as they are written), else in memory.
- a bucketed log, or `engine="ray"`: `buckets.score_buckets` over the states that
  `buckets.local_states` or `ray.ray_states` yield, one bucket at a time, spilled.
All give the same per-sample numbers; a bucketed log's scores are ordered by (bucket, sample_id),
any other's by sample_id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import polars as pl

from carto_cli.engines import buckets, incremental, ray, runs
from carto_cli.engines import findings as findings_pass
from carto_cli.engines import plan as planner
from carto_cli.errors import ChoiceError, OptionError
from carto_cli.io import artifacts
from carto_cli.io.logs import LogSet, open_logs
from carto_cli.score import compiled, quadrants, rules, streamed


@dataclass(frozen=True)
class Placement:
    """How quadrant thresholds are chosen (see `quadrants.resolve_thresholds`)."""

    d_quantile: float = 0.5
    m_quantile: float = 0.5
    d_threshold: float | None = None
    m_threshold: float | None = None

    def thresholds(self, scores: pl.DataFrame | pl.LazyFrame) -> quadrants.Thresholds:
        return quadrants.resolve_thresholds(
            scores,
            difficulty_quantile=self.d_quantile,
            memorization_quantile=self.m_quantile,
            difficulty_threshold=self.d_threshold,
            memorization_threshold=self.m_threshold,
        )


@dataclass
class ScoreRun:
    """What a scoring run did: the facts `carto score` prints and records."""

    out: Path
    samples: int
    rows: int
    parts: int
    rule: rules.CorrectnessRule
    method: str
    samples_general: int
    rows_dropped_nonfinite: int
    thresholds: quadrants.Thresholds
    table: list[dict]
    engine: str
    buckets: int
    ever_learned: int
    notes: list[str] = field(default_factory=list)
    memorization: str = "forget events / transitions"  # what the memorization column holds
    dense_build: str | None = None  # "compiled" or "numpy" where the dense kernel ran (same results)
    findings: findings_pass.FindingsRun | None = None  # `--data`: the memorized strings and their copies


ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None) -> None:
    """Refuse an unknown engine, or an address for an engine that takes none."""
    if engine not in ENGINES:
        raise ChoiceError(f"--engine must be one of {', '.join(ENGINES)}; got '{engine}'")
    if engine == "local" and address is not None:
        raise OptionError("--address applies to --engine ray only")


def run_score(
    logset: LogSet,
    params: rules.ScoreParams,
    *,
    out: Path,
    inputs: list[str],
    placement: Placement = Placement(),
    engine: str = "local",
    address: str | None = None,
    update: bool = False,
    on_bucket: Callable[[], None] | None = None,
    findings: findings_pass.FindingsRequest | None = None,
) -> ScoreRun:
    """Score `logset` into `out` (see the module docstring); with `findings`, then find the memorized
    strings and every copy of them in the training data, and place the samples by them
    (`carto_cli.engines.findings`)."""
    check_engine(engine, address)
    groups = buckets.bucket_groups(logset)
    n_buckets = 0 if None in groups else len(groups)
    notes: list[str] = []
    cleanup = None
    if update and params.memorization == "auto":
        params = replace(params, memorization="forgets")
        if planner.has_sketch(logset):
            notes.append("memorization: forget events, because --update keeps no state for the extractable "
                         "signal; rescore without --update to rank by it")
    params = planner.resolve_signal(logset, params)
    if findings is not None:
        _check_findings(logset, params, update)
    if params.memorization != "forgets" and update:
        raise OptionError(
            f"--memorization {params.memorization} is not kept in the --update state (it is not additive in "
            "time); drop --update, or use --memorization forgets"
        )
    if update:
        if engine != "local":
            raise OptionError("--update runs on the local engine; drop --engine ray")
        result, account = incremental.score_update(logset, params, incremental.state_path(out))
        notes.append(account)
    elif engine == "local" and not n_buckets:
        result = runs.score_runs(logset, params, stream=True)
    else:
        run_ids = runs.run_ids(logset)
        if len(run_ids) > 1:
            where = "a bucketed log" if n_buckets else "--engine ray"
            raise OptionError(f"{where} is scored one run at a time and these logs hold several; pass --run ID "
                              f"(runs: {', '.join(repr(r) for r in run_ids)})")
        result = None
        plan = planner.prepare(logset, params)
        stride = buckets.stride(groups, dense=params.method == "auto")
        signal = (plan, params) if params.memorization != "forgets" else None
        if engine == "ray":
            scored = ray.ray_buckets(plan.kernel, groups, never_learned=params.never_learned, stride=stride,
                                     signal=signal, address=address)
        else:
            scored = buckets.local_buckets(plan.kernel, groups, never_learned=params.never_learned, stride=stride,
                                           signal=signal)
        frame, cleanup, facts = buckets.score_buckets(scored, params, n_buckets=len(groups), on_bucket=on_bucket)
    if logset.replayed_rows:
        notes.append(f"left out {logset.replayed_rows:,} row(s) as replays of a restarted run (the latest "
                     "attempt of a step counts; see docs/logging.md#restarts-and-replays)")
    try:
        if result is not None:
            streaming = isinstance(result.scores, streamed.StreamedScores)
            # streamed: the thresholds read difficulty and memorization alone, then the columns are
            # made as they are written
            inputs_of_thresholds = result.scores.placement() if streaming else result.scores
            frame = result.scores.lazy()
            rule, method, general = result.rule, result.method, result.samples_general
            dropped, notes, memorization = result.rows_dropped_nonfinite, result.notes + notes, result.memorization
        else:
            rule, method, general = plan.kernel.rule, plan.kernel.method, facts["samples_general"]
            if facts["dense_buckets"]:  # the dense kernel ran on these buckets, `method` on the others
                method = "dense" if facts["dense_buckets"] == facts["buckets"] else \
                    f"dense in {facts['dense_buckets']} of {facts['buckets']} buckets, {method} in the others"
            dropped, notes, memorization = plan.rows_dropped_nonfinite, plan.notes + notes, plan.memorization
            streaming, inputs_of_thresholds = False, frame
        thresholds = placement.thresholds(inputs_of_thresholds)
        del inputs_of_thresholds
        # which build of the dense kernel ran (the results are the same bits; the speed is not); on
        # Ray the workers' own installs decide, unknown here
        dense_build = None if "dense" not in method or engine != "local" else \
            "compiled" if compiled.available() else "numpy"
        prov = artifacts.provenance(
            "scores",
            inputs=[{"path": p} for p in inputs],
            parameters={**asdict(params), **asdict(placement)},
            parts={"count": len(logset.parts), "rows": logset.num_rows, "sha256": logset.digest(),
                   "skipped": [str(p) for p, _ in logset.skipped], "replayed_rows": logset.replayed_rows,
                   "runs": runs.run_ids(logset)},
            correctness_rule=rule.describe(),
            memorization=memorization,
            thresholds=thresholds.as_dict(),
            method_used=method,
            dense_build=dense_build,
            rows_dropped_nonfinite=dropped,
        )
        placed = quadrants.assign(frame, thresholds)
        artifacts.write(placed, out, prov)
    finally:
        if cleanup is not None:
            cleanup()
    found = None
    if findings is not None:  # rewrites the scores file: memorization and quadrants by findings
        searcher = ray.ray_search(address) if engine == "ray" else findings_pass.core.search
        found = findings_pass.run(logset, out, findings, early_epochs=params.early_epochs,
                                  drop_nonfinite=params.nonfinite == "drop", searcher=searcher)
        thresholds, streaming, memorization = found.thresholds, True, findings_pass.DESCRIPTION
    # The report reads the scores back from memory when they are there, else from the written file
    # (streamed, or a bucketed or Ray run spilled them); the numbers are the same. The quadrants are
    # counted from the thresholds (`quadrants.codes`), without making their strings again.
    report = frame if result is not None and not streaming else pl.scan_parquet(out)
    table = quadrants.summary(report, thresholds)
    counts = report.select(pl.len().alias("samples"), pl.col("n_seen").sum().alias("rows"),
                            pl.col("ever_learned").sum().alias("learned"),
                            pl.col("difficulty").null_count().alias("no_difficulty"),
                            pl.col("memorization").null_count().alias("no_memorization")).collect().row(0, named=True)
    counts["unplaced"] = sum(row["samples"] for row in table if row["quadrant"] == quadrants.UNPLACED)
    if counts["unplaced"] and thresholds.difficulty_quantile is not None:
        notes.append(unplaced_note(counts, params))
    return ScoreRun(
        out=out,
        samples=counts["samples"],
        rows=int(counts["rows"] or 0),
        parts=len(logset.parts),
        rule=rule,
        method=method,
        samples_general=general,
        rows_dropped_nonfinite=dropped,
        thresholds=thresholds,
        table=table,
        engine=engine,
        buckets=n_buckets,
        ever_learned=int(counts["learned"] or 0),
        notes=notes,
        memorization=memorization,
        dense_build=dense_build,
        findings=found,
    )


def _check_findings(logset: LogSet, params: rules.ScoreParams, update: bool) -> None:
    """--data needs what findings are made of: the sketch, and the extractable signal's values."""
    if update:
        raise OptionError("--data does not combine with --update (the findings need the extractable signal, "
                          "which --update keeps no state for); drop one of them")
    if not planner.has_sketch(logset):
        raise OptionError("--data finds memorized strings from the shim's memorization sketch, and this log has "
                          "none; log from logits with the shim's default sketch, or drop --data")
    if params.memorization != "extractable":
        raise OptionError(f"--data finds memorized strings by the extractable signal; drop --memorization "
                          f"{params.memorization}")
    run_ids = runs.run_ids(logset)
    if len(run_ids) > 1:  # each run's last presentation is its own: one run's spans at a time
        raise OptionError(f"--data finds the strings of one run at a time and this log holds {len(run_ids)}; pass "
                          f"--run ID (runs: {', '.join(repr(r) for r in run_ids)})")


def unplaced_note(counts: dict, params: rules.ScoreParams) -> str:
    """Why samples got no quadrant, and what to change (`counts`: samples, unplaced, no_difficulty,
    no_memorization)."""
    k = params.early_epochs

    def have(n: int) -> str:
        return f"{n:,} {'has' if n == 1 else 'have'}"

    why = []
    if counts["no_difficulty"]:
        why.append(f"{have(counts['no_difficulty'])} no difficulty (no presentation at an epoch < {k})")
    if counts["no_memorization"]:
        if params.memorization == "forgets":
            cause = "never learned, left out by --never-learned exclude)"
        else:
            cause = (f"{params.memorization} needs a presentation at an epoch < {k} and one at {k} or later); "
                     f"to place them, train past epoch {k} or lower --early-epochs")
        why.append(f"{have(counts['no_memorization'])} no memorization ({cause}")
    share = counts["unplaced"] / counts["samples"]
    return (f"{counts['unplaced']:,} of {counts['samples']:,} samples ({share:.0%}) "
            f"{'is' if counts['unplaced'] == 1 else 'are'} unplaced: {'; '.join(why)}")


def score_logs(
    logs: str | Path | list[str | Path],
    *,
    placement: Placement = Placement(),
    **params: object,
) -> pl.DataFrame:
    """The scores of `carto score`, with their quadrant, as a Polars frame: for a notebook.

        from carto_cli import score_logs
        scores = score_logs("logs/", early_epochs=2)          # one row per sample
        scores.filter(pl.col("quadrant") == "hotspot-memorized")

    `logs`: a directory, a part, a URL or a list of them. `params`: the fields of
    `carto_cli.score.rules.ScoreParams` (the options of `carto score`, underscored). In memory, on
    the local engine; nothing is written.
    """
    paths = list(logs) if isinstance(logs, list | tuple) else [logs]
    result = runs.score_runs(open_logs(paths), rules.ScoreParams(**params))
    return quadrants.assign(result.scores, placement.thresholds(result.scores))
