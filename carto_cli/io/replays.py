"""Runs, attempts and replays: what a restarted run logged twice, and which copy counts.

A training run that crashes and resumes from a checkpoint replays the steps after the checkpoint.
Each `CartoLogger` instance is one *attempt* of its run: its parts carry the run id
(`carto.run_id`, stable across ranks and restarts), the attempt id (`carto.attempt`) and the
attempt's start time (`carto.attempt_started_ns`, its first `record`). The rule, per run and rank:

    A row of an attempt is a *replay* when a later attempt of the same run and rank (later by
    start time) logged a step at or before the row's step: that attempt re-ran the row's step.
    Replays are dropped; the latest attempt's rows count.

So a presentation logged before a crash and again after the resume is counted once, whether or not
the first process exited cleanly. The rule is per rank because a data-parallel resume replays each
rank's shard on the same rank; a resume with a different world size leaves the rows of ranks that no
longer exist (their replays cannot be matched) and says so in no way: keep the world size.

Parts without attempt metadata (written by hand, or by an earlier carto) belong to one unnamed run
and are never dropped. Two runs logged into one directory without distinct `run_id`s are one run to
this rule: the second supersedes the first from its first step (`carto logs summary` reports the
replayed rows, so it shows).

Concurrent attempts are never a resume. Each part also records when it was written
(`carto.written_ns`); an attempt's lifetime is [its start, its last part's write]. A resumed
attempt starts after the attempt it resumes has died, so after its last part: two attempts of one
(run, rank) whose lifetimes overlap ran at the same time, which no crash and resume does. They are
refused in one line naming the attempts and the fix, not scored: the reader cannot tell what they
were, and each guess gives wrong numbers for one case. Processes that all took rank 0 (a logger
built before `init_process_group` under `torch.multiprocessing.spawn`, before the shim re-resolved
the rank at its first record) hold different samples, so keeping both would be right; two runs
(seeds) started at once under one run id each present every sample, so keeping both interleaves two
runs' presentations into one sequence (wrong forget events, a wrong last presentation); and the
rule above, as before, would silently drop one of them. The shim also refuses a second writer of
one (directory, run, rank) at its first record (`carto_cli.log.attempt`), so such a log only comes
from writers without that check (a filesystem without locks, hosts that do not share them, another
writer that records `carto.written_ns`). Parts without
`carto.written_ns` (older logs) have no known lifetime: the rule above applies to them unchanged.

Applying the rule costs footer reads only, except for a part that straddles a later attempt's first
step: its kept rows are copied once into a temporary part (typically one part per rank and restart).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.compute as pc

from carto_cli.errors import LogFormatError
from carto_cli.io import storage
from carto_cli.log import schema
from carto_cli.log.writer import write_parquet

LEGACY_RUN = ""  # the run of parts without attempt metadata


@dataclass(frozen=True)
class Attempt:
    """Where one part sits among its run's attempts."""

    run: str
    rank: int
    attempt: str
    started_ns: int
    written_ns: int | None = None  # when this part was written (None: an older part, not recorded)


def attempt_of(metadata: dict[str, str]) -> Attempt | None:
    """The attempt a part's metadata names, or None for a part without attempt metadata."""
    attempt = metadata.get(schema.META_ATTEMPT)
    started = metadata.get(schema.META_ATTEMPT_STARTED)
    if not attempt or started is None:
        return None
    written = metadata.get(schema.META_WRITTEN)
    return Attempt(
        run=metadata.get(schema.META_RUN_ID, LEGACY_RUN),
        rank=int(metadata.get(schema.META_RANK, "0")),
        attempt=attempt,
        started_ns=int(started),
        written_ns=None if written is None else int(written),
    )


def run_of(metadata: dict[str, str]) -> str:
    """The run a part belongs to (LEGACY_RUN for parts without attempt metadata)."""
    found = attempt_of(metadata)
    return LEGACY_RUN if found is None else found.run


def step_range(part) -> tuple[int, int]:
    """(min, max) step of a part from its footer statistics; reads the column where they are missing."""
    idx = part.arrow_schema.names.index(schema.STEP)
    lo = hi = None
    for rg in range(part.footer.num_row_groups):
        stats = part.footer.row_group(rg).column(idx).statistics
        if stats is None or not stats.has_min_max:
            from carto_cli.io.logs import reading  # io.logs imports this module

            with reading(part.path):
                column = storage.open_parquet(part.path).read(columns=[schema.STEP]).column(0)
            bounds = pc.min_max(column)
            return int(bounds["min"].as_py()), int(bounds["max"].as_py())
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return (0, -1) if lo is None else (int(lo), int(hi))


def apply(parts: list) -> tuple[list, int]:
    """The parts with replays removed, and how many rows were replays. Parts wholly replayed are
    left out; a part partly replayed is replaced by a temporary copy of its kept rows (the returned
    LogPart names the original in `origin`)."""
    by_attempt: dict[tuple[str, int], dict[str, list]] = {}
    started: dict[str, int] = {}
    ended: dict[str, int | None] = {}  # the attempt's last part's write; None where a part has no time
    for part in parts:
        found = attempt_of(part.metadata)
        if found is None:
            continue
        by_attempt.setdefault((found.run, found.rank), {}).setdefault(found.attempt, []).append(part)
        started[found.attempt] = found.started_ns
        last = ended.get(found.attempt, 0)
        ended[found.attempt] = None if last is None or found.written_ns is None else max(last, found.written_ns)
    cutoff: dict[int, int] = {}  # id(part) -> first step of the earliest later attempt
    for (run, rank), attempts in by_attempt.items():
        if len(attempts) < 2:
            continue
        ordered = sorted(attempts, key=lambda a: (started[a], a))
        _refuse_concurrent(run, rank, ordered, started, ended, attempts)
        # an attempt's first step, over its parts that hold rows (an empty part re-ran nothing)
        first_step = {a: min((step_range(p)[0] for p in attempts[a] if p.num_rows), default=None) for a in ordered}
        later_min = None
        for a in reversed(ordered):  # the earliest first step among the attempts after `a`
            if later_min is not None:
                for part in attempts[a]:
                    cutoff[id(part)] = later_min
            if first_step[a] is not None:
                later_min = first_step[a] if later_min is None else min(later_min, first_step[a])
    if not cutoff:
        return parts, 0
    kept, replayed = [], 0
    for part in parts:
        limit = cutoff.get(id(part))
        if limit is None:
            kept.append(part)
            continue
        lo, hi = step_range(part)
        if hi < limit:
            kept.append(part)
        elif lo >= limit:
            replayed += part.num_rows
        else:
            trimmed = _trimmed_copy(part, limit)
            replayed += part.num_rows - trimmed.num_rows
            if trimmed.num_rows:
                kept.append(trimmed)
    return kept, replayed


def _refuse_concurrent(run: str, rank: int, ordered: list[str], started: dict[str, int],
                       ended: dict[str, int | None], attempts: dict[str, list]) -> None:
    """A one-line LogFormatError when two attempts of (run, rank), `ordered` by start, have
    overlapping lifetimes; attempts without a known end are not compared."""
    latest: str | None = None  # of the attempts started so far, the one whose lifetime ends last
    for attempt in ordered:
        if latest is not None and started[attempt] <= ended[latest]:
            raise LogFormatError(
                f"{attempts[attempt][0].path}: attempts {latest} and {attempt} of run '{run}' both logged "
                f"rank {rank} at the same time (the second started before the first wrote its last part), so "
                "they are not a restart and carto will not guess which rows count; if they were different "
                "ranks, log with CartoLogger(rank=...) (the process index under torch.multiprocessing.spawn) "
                "or call init_process_group before the first record; if different runs, give each its own "
                f"run_id; to score this log, move each attempt's parts (part-r{rank:05d}-<attempt>-*.parquet) "
                "into a directory of its own and score each"
            )
        if ended[attempt] is not None and (latest is None or ended[attempt] > ended[latest]):
            latest = attempt


_scratch: Path | None = None


def _scratch_dir() -> Path:
    """One temporary directory per process for trimmed parts, removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="carto-replays-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def _trimmed_copy(part, limit: int):
    """A temporary part holding the rows of `part` with step < limit (same schema and metadata)."""
    from carto_cli.io.logs import inspect_part, reading  # io.logs imports this module

    with reading(part.path):
        table = storage.open_parquet(part.path).read()
    table = table.filter(pc.less(table.column(schema.STEP), limit))
    target = _scratch_dir() / f"{len(list(_scratch_dir().iterdir())):06d}-{Path(str(part.path)).name}"
    write_parquet(table, target)  # as the shim writes parts: zstd, page checksums
    return replace(inspect_part(target), origin=part.path)
