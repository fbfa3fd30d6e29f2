"""Reading logs: find the finished parts, check them against the log contract, scan them lazily.

Only Parquet footers are read to validate a part (schema, row count, null counts from the column
statistics), so opening a log of thousands of parts costs milliseconds per part, not a data pass.

What counts as bad input, and what happens:
- a path that does not exist, a directory with no parts, a file that is not Parquet: error.
- a truncated or otherwise unreadable part: error naming it, or, with `skip_corrupt=True`, the part
  is left out and reported in `LogSet.skipped` (the CLI prints a warning naming each one).
- a required column missing or of the wrong kind, null values in a required column: error naming
  the file and the column.
Hidden files and unfinished parts (`.tmp`) are never read: the shim renames a part only when whole.
A log may also be an object-store URL (`s3://bucket/prefix/`, see `carto_cli.io.storage`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from carto_cli.errors import LogFormatError, UnreadablePartError, first_line
from carto_cli.io import replays, storage
from carto_cli.io.storage import Location
from carto_cli.log import schema

# Polars dtypes every part is cast to on scan (sample_id is decided per log set, see `scan`).
SCAN_DTYPES = {
    schema.EPOCH: pl.Int64,
    schema.STEP: pl.Int64,
    schema.LOSS: pl.Float64,
    schema.CORRECT: pl.Boolean,
    schema.TOKEN_ACC: pl.Float64,
    schema.TAIL_LOSS: pl.Float64,
    schema.N_TOKENS: pl.Int64,
    schema.RANK: pl.Int64,
    schema.TOKEN_LOSS: pl.List(pl.Float64),
    schema.TOP_POS: pl.List(pl.Int64),
    schema.TOP_LOSS: pl.List(pl.Float64),
    schema.HIT_RUNS: pl.List(pl.Int64),
}


@dataclass(frozen=True)
class LogPart:
    """One finished part file, as its footer describes it."""

    path: Location  # a local Path, or a storage.RemotePath
    num_rows: int
    size_bytes: int
    arrow_schema: pa.Schema
    null_counts: dict[str, int | None]  # per known column; None where statistics are missing
    footer: pq.FileMetaData = field(repr=False, compare=False)  # row groups and their statistics
    origin: Location | None = None  # the part this one was trimmed from (`carto_cli.io.replays`)

    @property
    def columns(self) -> set[str]:
        return set(self.arrow_schema.names)

    @property
    def metadata(self) -> dict[str, str]:
        raw = self.arrow_schema.metadata or {}
        return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"carto.")}


@dataclass
class LogSet:
    """The parts that make up one log, in a stable order, and those that were skipped."""

    parts: list[LogPart]
    skipped: list[tuple[Location, str]] = field(default_factory=list)
    replayed_rows: int = 0  # rows left out as replays of a restarted run (`carto_cli.io.replays`)

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.parts)

    def has_column(self, name: str) -> bool:
        """True when every part has the column."""
        return all(name in p.columns for p in self.parts)

    def digest(self) -> str:
        """sha256 over (path, size, rows) of every part: identifies exactly which data was scored."""
        h = hashlib.sha256()
        for p in self.parts:  # a trimmed part by its origin and kept rows: the same log, the same digest
            h.update(f"{p.origin or p.path}\0{p.size_bytes if p.origin is None else 0}\0{p.num_rows}\n".encode())
        return h.hexdigest()


def discover(paths: Sequence[str | os.PathLike[str] | Location]) -> list[Location]:
    """Expand files and directories (recursively; local or object-store prefixes) into part
    paths, sorted, temporary names skipped."""
    found: list[Location] = []
    for raw in paths:
        path = storage.location(raw)
        kind = storage.kind(path)
        if kind == "missing":
            raise LogFormatError(f"{path}: no such file or directory; pass a log directory or part file")
        if kind == "dir":
            if isinstance(path, Path):
                candidates = [(p, p.relative_to(path).parts) for p in path.rglob(f"*{schema.PART_SUFFIX}")
                              if p.is_file()]
            else:
                candidates = storage.list_files(path, schema.PART_SUFFIX)
            parts = sorted((p for p, relative in candidates if not any(schema.is_temporary_name(x) for x in relative)),
                           key=str)
            if not parts:
                raise LogFormatError(
                    f"{path}: no finished log parts (*{schema.PART_SUFFIX}) in this directory; "
                    "check the path, or that training ran with the carto logger"
                )
            found.extend(parts)
        else:
            found.append(path)
    # The same part named twice (a directory and a file in it) is read once.
    unique = sorted(set(found), key=str)
    return unique


def inspect_part(path: Location) -> LogPart:
    """Read and check one part's footer. Raises LogFormatError naming the file and the fix."""
    try:
        pf = storage.open_parquet(path)
    except (pa.ArrowInvalid, OSError) as exc:
        reason = f"not a readable Parquet file ({first_line(exc)})"
        raise UnreadablePartError(
            f"{path}: {reason}; if it is a truncated part, remove it or pass --skip-corrupt", reason
        ) from None
    arrow_schema = pf.schema_arrow
    for name in schema.REQUIRED_COLUMNS:
        if name not in arrow_schema.names:
            raise LogFormatError(
                f"{path}: required column '{name}' is missing (has: {', '.join(arrow_schema.names)}); "
                f"log parts need {', '.join(schema.REQUIRED_COLUMNS)}"
            )
    for name, kind in schema.COLUMN_KINDS.items():
        if name in arrow_schema.names:
            dtype = arrow_schema.field(name).type
            if schema.column_kind(dtype) != kind:
                raise LogFormatError(
                    f"{path}: column '{name}' has type {dtype}, expected {kind}; "
                    "write it with that type (see the log contract in docs/logging.md)"
                )
    meta = pf.metadata
    null_counts: dict[str, int | None] = {}
    for name in schema.COLUMN_KINDS:
        if name not in arrow_schema.names:
            continue
        idx = arrow_schema.names.index(name)
        total: int | None = 0
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(idx).statistics
            if stats is None or not stats.has_null_count:
                total = None
                break
            total += stats.null_count
        null_counts[name] = total
    return LogPart(
        path=path,
        num_rows=meta.num_rows,
        size_bytes=storage.size(path),
        arrow_schema=arrow_schema,
        null_counts=null_counts,
        footer=meta,
    )


def open_logs(
    paths: Sequence[str | os.PathLike[str] | Location],
    *,
    skip_corrupt: bool = False,
    on_part: Callable[[Location], None] | None = None,
) -> LogSet:
    """Discover and check every part. `on_part` is called once per part (for a progress bar)."""
    logset = LogSet(parts=[])
    for path in discover(paths):
        try:
            part = inspect_part(path)
        except UnreadablePartError as exc:
            if not skip_corrupt:
                raise
            # the reason alone: the caller names the path, and the hint to pass --skip-corrupt is moot
            logset.skipped.append((path, exc.reason))
            continue
        finally:
            if on_part is not None:
                on_part(path)
        logset.parts.append(part)
    if not logset.parts:
        raise LogFormatError(
            f"{', '.join(map(str, paths))}: every part was skipped as unreadable; nothing to score"
        )
    _check_sample_id_types(logset.parts)
    _check_required_nulls(logset.parts)
    logset.parts, logset.replayed_rows = replays.apply(logset.parts)
    return logset


def sample_id_dtype(parts: Iterable[LogPart]) -> pl.DataType:
    """UInt64 when every part stores unsigned ids, else Int64 (see `_check_sample_id_types`)."""
    unsigned = [pa.types.is_unsigned_integer(p.arrow_schema.field(schema.SAMPLE_ID).type) for p in parts]
    return pl.UInt64 if all(unsigned) else pl.Int64


def scan(logset: LogSet, columns: Sequence[str]) -> pl.LazyFrame:
    """A lazy frame over every part of a checked log set (see `scan_paths`)."""
    return scan_paths([str(p.path) for p in logset.parts], columns, sample_id_dtype=sample_id_dtype(logset.parts))


def scan_paths(paths: Sequence[str], columns: Sequence[str], *, sample_id_dtype: pl.DataType) -> pl.LazyFrame:
    """A lazy frame over the parts at `paths` with `columns`, each cast to one dtype across parts.

    Optional columns a part lacks read as nulls; unknown columns are ignored.
    """
    dtypes = {schema.SAMPLE_ID: sample_id_dtype, **SCAN_DTYPES}
    return pl.scan_parquet(
        list(paths),
        schema={name: dtypes[name] for name in columns},
        missing_columns="insert",
        extra_columns="ignore",
        cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),
    )


def _check_sample_id_types(parts: list[LogPart]) -> None:
    """Mixing uint64 ids with signed ids cannot be cast losslessly: refuse, naming both files."""
    u64 = [p for p in parts if p.arrow_schema.field(schema.SAMPLE_ID).type == pa.uint64()]
    signed = [p for p in parts if pa.types.is_signed_integer(p.arrow_schema.field(schema.SAMPLE_ID).type)]
    if u64 and signed:
        raise LogFormatError(
            f"{u64[0].path}: column 'sample_id' is uint64 but it is signed in {signed[0].path}; "
            "write sample_id with one integer type in every part"
        )


def _check_required_nulls(parts: list[LogPart]) -> None:
    """Required columns may not hold nulls. Uses footer statistics; reads the column where absent."""
    for part in parts:
        for name in schema.REQUIRED_COLUMNS:
            count = part.null_counts.get(name)
            if count is None:
                column = storage.open_parquet(part.path).read(columns=[name]).column(0)
                count = column.null_count
            if count:
                raise LogFormatError(
                    f"{part.path}: column '{name}' has {count} null value(s); "
                    f"every row needs a {name} (drop those rows when writing the part)"
                )


def summarize(logset: LogSet) -> dict[str, object]:
    """Parts, rows, distinct samples, epochs and ranks of a log set (one pass over two columns)."""
    lf = scan(logset, [schema.SAMPLE_ID, schema.EPOCH, schema.RANK])
    stats = lf.select(
        samples=pl.col(schema.SAMPLE_ID).n_unique(),
        epochs=pl.col(schema.EPOCH).unique().sort().implode(),
        ranks=pl.col(schema.RANK).drop_nulls().unique().sort().implode(),
    )
    row = stats.collect().row(0, named=True)
    return {
        "parts": len(logset.parts),
        "rows": logset.num_rows,
        "samples": row["samples"],
        "epochs": len(row["epochs"]),
        "epoch_range": [min(row["epochs"]), max(row["epochs"])] if row["epochs"] else None,
        "ranks": len(row["ranks"]) or 1,
        "skipped": [str(p) for p, _ in logset.skipped],
        "runs": len({replays.run_of(p.metadata) for p in logset.parts}),
        "replayed_rows": logset.replayed_rows,
    }
