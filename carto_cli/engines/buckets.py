"""The bucketed log layout: each sample's rows in one directory, so a log can be scored bucket by
bucket with memory bounded by the largest bucket.

A bucketed log keeps parts under `bucket=<b>/` with b = sample_id mod n_buckets (floored, so b is
in [0, n) for negative ids too): a stable function, the same in every version and language, not a
hash. The shim writes this layout with `CartoLogger(buckets=n)`; `carto logs bucketize` converts an
existing log (one streaming pass; the source is not modified).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import polars as pl

from carto_cli.errors import LogFormatError, OptionError
from carto_cli.io.logs import LogPart, LogSet, scan
from carto_cli.io.storage import Location
from carto_cli.log import schema

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
