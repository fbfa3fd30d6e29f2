"""Incremental scoring: fold only the parts that arrived since the last run into a saved state.

`carto score LOGS --update` keeps, next to the scores file, `<scores>.state`: a Parquet file with
one row of per-sample state (see `state.STATE_COLUMNS`) and, in its metadata, the ledger of parts
already folded in (path, size, rows) and the scoring parameters. A later `--update` run scores the
new parts alone and merges them (`state.merge_states`), which gives exactly the scores of a full
run as long as the new parts continue the run in time (checked per sample).

Refused, with a message saying to rescore without --update: a folded part that changed or
disappeared, different scoring parameters, a percentile threshold (it would move with new data),
a saved state that lacks a state column (written before the state carried it).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from carto_cli.engines import local, runs
from carto_cli.engines import plan as planner
from carto_cli.errors import OptionError, ScoresFormatError
from carto_cli.io import artifacts
from carto_cli.io.logs import LogPart, LogSet
from carto_cli.score import rules
from carto_cli.score.state import STATE_COLUMNS, merge_states
from carto_cli.version import __version__

STATE_SUFFIX = ".state"
# Parameters that change the per-sample state; the others apply when scores are finalised.
_STATE_PARAMETERS = ("early_epochs", "correct_from", "threshold", "nonfinite")


def state_path(scores_out: Path) -> Path:
    return scores_out.with_name(scores_out.name + STATE_SUFFIX)


def _ledger_key(part: LogPart) -> str:
    return str(part.path.resolve())


def score_update(logset: LogSet, params: rules.ScoreParams, state_file: Path) -> tuple[local.ScoreResult, str]:
    """Score `logset`, reusing the state saved in `state_file` when there is one; save the new state.

    Returns the result and a one-line account of what was folded.
    """
    rule = rules.fixed_rule(params)
    if rule is None:
        raise OptionError(
            "--update needs a fixed correctness threshold (a percentile moves as data arrives); "
            "pass --threshold as a number"
        )
    if logset.replayed_rows:
        raise OptionError(
            f"the log holds {logset.replayed_rows:,} row(s) replayed by a restarted run; --update cannot "
            "take back rows it folded before the restart: rescore without --update"
        )
    if len(runs.run_ids(logset)) > 1:
        raise OptionError("--update scores one run; these logs hold several: rescore without --update, "
                          "or pass --run to score one of them")
    wanted = {name: getattr(params, name) for name in _STATE_PARAMETERS}
    previous = _load(state_file) if state_file.exists() else None
    if previous is None:
        new_parts, state_before = logset.parts, None
    else:
        state_before, ledger, saved = previous
        if saved != wanted:
            diff = ", ".join(f"{k}={saved.get(k)!r}" for k in wanted if saved.get(k) != wanted[k])
            raise OptionError(
                f"{state_file} was made with {diff}; pass the same options, or rescore without --update"
            )
        current = {_ledger_key(p): p for p in logset.parts}
        for key, (size, rows) in ledger.items():
            part = current.get(key)
            if part is None or (part.size_bytes, part.num_rows) != (size, rows):
                what = "is gone" if part is None else "has changed"
                raise OptionError(
                    f"{key} was scored before but {what}; rescore without --update"
                )
        new_parts = [p for p in logset.parts if _ledger_key(p) not in ledger]

    if new_parts:
        plan = planner.prepare(LogSet(parts=new_parts), params)
        segment, samples_general = local.full_state(plan.kernel, new_parts, dense_ok=params.method == "auto")
        state = segment if state_before is None else merge_states(state_before, segment)
    else:
        kernel = planner.Kernel(rule, params.early_epochs, "none", False, "Int64")
        plan, state, samples_general = planner.Plan(kernel), state_before, 0
    folded_rows = sum(p.num_rows for p in new_parts)
    if state_before is None:
        account = f"no saved state: scored all {len(new_parts):,} part(s) and saved the state to {state_file}"
    else:
        account = f"folded {len(new_parts):,} new part(s) ({folded_rows:,} rows) into the saved state"
    _save(state_file, state, logset, wanted)
    return local.finish(state, plan, params, samples_general), account


def _save(path: Path, state: pl.DataFrame, logset: LogSet, parameters: dict) -> None:
    ledger = {_ledger_key(p): [p.size_bytes, p.num_rows] for p in logset.parts}
    prov = artifacts.provenance("state", inputs=[], parameters=parameters, ledger=ledger)
    artifacts.write(state.sort("sample_id"), path, prov)


def _load(path: Path) -> tuple[pl.DataFrame, dict, dict]:
    df, prov = artifacts.read(path, "state")
    if prov.get("carto_version") != __version__:
        raise ScoresFormatError(
            f"{path} was written by carto {prov.get('carto_version')}, this is {__version__}; "
            "rescore without --update"
        )
    missing = [c for c in STATE_COLUMNS if c not in df.columns]
    if missing:  # saved before the state carried them (e.g. confidence's sums): they cannot be rebuilt
        raise ScoresFormatError(
            f"{path} was saved without the state column(s) {', '.join(missing)}; rescore without --update"
        )
    return df.select(STATE_COLUMNS), {k: tuple(v) for k, v in prov["ledger"].items()}, prov["parameters"]
