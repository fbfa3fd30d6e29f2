"""The bucketed log layout: each sample's rows in one directory, so a log can be scored bucket by
bucket with memory bounded by the largest bucket.

A bucketed log keeps parts under `bucket=<b>/` with b = sample_id mod n_buckets (floored, so b is
in [0, n) for negative ids too): a stable function, the same in every version and language, not a
hash. The shim writes this layout with `CartoLogger(buckets=n)`; `carto logs bucketize` converts an
existing log (one streaming pass; the source is not modified).

Below the layout: scoring bucket by bucket (`bucket_scores`, `local_buckets`, `score_buckets`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from carto_cli.engines.local import dense_scores, signal_values, with_signal
from carto_cli.engines.plan import Kernel, Plan
from carto_cli.engines.runs import run_ids
from carto_cli.errors import LogFormatError, OptionError
from carto_cli.io.logs import LogPart, LogSet, scan
from carto_cli.io.storage import Location
from carto_cli.log import schema
from carto_cli.score.rules import ScoreParams
from carto_cli.score.state import finalize

_BUCKET_DIR = re.compile(r"^bucket=(-?\d+)$")


def bucket_expr(n_buckets: int) -> pl.Expr:
    """The bucket of each row's sample: sample_id mod n_buckets (floored)."""
    return (pl.col(schema.SAMPLE_ID) % n_buckets).cast(pl.Int64)


def bucket_of_path(path: Location) -> int | None:
    """The bucket a part belongs to: the innermost `bucket=<b>` directory of its path, if any."""
    for name in reversed(path.parent.parts):
        match = _BUCKET_DIR.match(name)
        if match:
            return int(match.group(1))
    return None


def bucket_groups(logset: LogSet) -> dict[int | None, list[LogPart]]:
    """Parts grouped by bucket, in bucket order; {None: parts} for a log that is not bucketed."""
    groups: dict[int | None, list[LogPart]] = {}
    for part in logset.parts:
        groups.setdefault(bucket_of_path(part.path), []).append(part)
    if None in groups and len(groups) > 1:
        stray = groups[None][0].path
        raise LogFormatError(
            f"{stray}: part outside any bucket=<b>/ directory in a bucketed log; "
            "bucketize the whole log (carto logs bucketize) or score the buckets alone"
        )
    return dict(sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))


def bucketize(logset: LogSet, out_dir: Path, n_buckets: int) -> dict[int, int]:
    """Write `logset` in the bucketed layout under `out_dir` (which must not exist yet).

    Streams the log once; written to a temporary directory renamed at the end, so `out_dir` exists
    only when complete. Returns rows per bucket.
    """
    if n_buckets < 1:
        raise OptionError(f"--buckets must be >= 1; got {n_buckets}")
    if out_dir.exists():
        raise OptionError(f"--out {out_dir} already exists; choose a new directory")
    runs = run_ids(logset)
    if len(runs) > 1:  # the rewritten parts carry no run: the runs would be merged into one
        raise OptionError(f"these logs hold {len(runs)} runs ({', '.join(repr(r) for r in runs)}); bucketize "
                          "each run's parts on their own (several runs are scored per run, unbucketed)")
    columns = [c for c in schema.COLUMN_KINDS if any(c in p.columns for p in logset.parts)]
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        scan(logset, columns).sink_parquet(
            pl.PartitionBy(str(tmp), key=bucket_expr(n_buckets).alias("bucket"), include_key=False),
            mkdir=True,
            compression="zstd",
        )
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows: dict[int, int] = {}
    for path in out_dir.rglob(f"*{schema.PART_SUFFIX}"):
        b = bucket_of_path(path)
        rows[b] = rows.get(b, 0) + pl.scan_parquet(path).select(pl.len()).collect().item()
    return dict(sorted(rows.items()))


# ------------------------------------------------------------------ scoring bucket by bucket
#
# Buckets hold disjoint samples, so each is reduced on its own: peak memory is that of the largest
# bucket, plus, for the exact quantile thresholds, two float columns over all samples (16 bytes per
# sample). The same reduction (`bucket_scores`) runs here bucket after bucket (`local_buckets`) or as
# Ray tasks (`carto_cli.engines.ray`); `score_buckets` spills the scores either yields.

SignalRequest = tuple[Plan, ScoreParams]  # the whole log's plan and the parameters of a signal


@dataclass(frozen=True)
class Bucket:
    """What one bucket's reduction returns (see `bucket_scores`)."""

    scores: pl.DataFrame  # the bucket's samples' scores (`finalize`'s columns), memorization not yet replaced
    samples_general: int  # samples the general path counted
    dense: bool  # whether the dense kernel ran
    signal: pl.DataFrame | None  # sample_id -> value of a memorization signal, when one was asked for


def stride(groups: dict[int | None, list[LogPart]], *, dense: bool) -> int:
    """The id stride of the buckets for the dense kernel: bucket b of n holds the ids = b mod n,
    n taken as the highest bucket + 1 (the kernel checks every id against it and declines where it
    does not hold); 1 for an unbucketed log; 0 for no dense kernel (a method the user forced)."""
    return 0 if not dense else 1 if None in groups else max(groups) + 1


def bucket_scores(kernel: Kernel, parts: list[LogPart], *, never_learned: str, stride: int = 1,
                  signal: SignalRequest | None = None) -> Bucket:
    """Score one bucket (parts holding disjoint samples, every id = b mod `stride`): the dense
    kernel where it applies (`dense_scores`: compiled where built), else `kernel.state` and
    `finalize`; stride 0 for no dense kernel. With `signal`, the bucket's values of the
    memorization signal too."""
    values = signal_values(parts, *signal) if signal is not None else None
    if kernel.method == "bitmask" and stride > 0:
        reduced = dense_scores(LogSet(parts), kernel, never_learned=never_learned, stride=stride)
        if reduced is not None:
            return Bucket(reduced[0], reduced[1], True, values)
    state, general = kernel.state([str(p.path) for p in parts])
    return Bucket(finalize(state, never_learned=never_learned), general, False, values)


def local_buckets(kernel: Kernel, groups: dict[int | None, list[LogPart]], *, never_learned: str, stride: int,
                  signal: SignalRequest | None) -> Iterator[tuple[int | None, Bucket]]:
    """(bucket, its `Bucket`) for every bucket, one after another in this process."""
    for bucket, parts in groups.items():
        yield bucket, bucket_scores(kernel, parts, never_learned=never_learned, stride=stride, signal=signal)


def score_buckets(
    scored: Iterable[tuple[int | None, Bucket]],
    params: ScoreParams,
    *,
    n_buckets: int,
    on_bucket: Callable[[], None] | None = None,
) -> tuple[pl.LazyFrame, Callable[[], None], dict]:
    """Spill every bucket's scores (with its signal's memorization, when one was asked for) to a
    temporary directory as `scored` yields them.

    Returns a lazy frame over the spilled scores (sorted by (bucket, sample_id)), a cleanup
    function to call once the frame has been consumed, and run facts (rows, samples counted by
    the general path). Memory: one bucket's scores at a time.
    """
    spill = Path(tempfile.mkdtemp(prefix="carto-buckets-"))
    facts = {"rows": 0, "samples_general": 0, "buckets": n_buckets, "dense_buckets": 0}
    try:
        for bucket, reduced in scored:
            scores = reduced.scores
            if reduced.signal is not None:
                scores = with_signal(scores, reduced.signal)
            # lz4: a temporary file, read once; 40% faster to write than zstd, 1.5x the size
            scores.write_parquet(spill / f"{0 if bucket is None else bucket:012d}.parquet", compression="lz4")
            facts["rows"] += int(scores["n_seen"].sum())
            facts["samples_general"] += reduced.samples_general
            facts["dense_buckets"] += reduced.dense
            if on_bucket is not None:
                on_bucket()
    except BaseException:
        shutil.rmtree(spill, ignore_errors=True)
        raise
    frame = pl.scan_parquet(sorted(str(p) for p in spill.glob("*.parquet")))
    return frame, lambda: shutil.rmtree(spill, ignore_errors=True), facts
