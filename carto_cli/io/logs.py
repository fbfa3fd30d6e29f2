"""Reading logs: find the finished parts, check them against the log contract, scan them lazily.

Only Parquet footers are read to validate a part (schema, row count, null counts from the column
statistics), so opening a log of thousands of parts costs milliseconds per part, not a data pass.

What counts as bad input, and what happens:
- a path that does not exist, a directory with no parts, a file that is not Parquet: error.
- a truncated or otherwise unreadable part: error naming it, or, with `skip_corrupt=True`, the part
  is left out and reported in `LogSet.skipped` (the CLI prints a warning naming each one).
- a part damaged inside, found when its pages are read (a page that fails to decode, a page
  checksum that fails, values that contradict the footer's statistics): `damaged` makes the error
  naming it, and `reading` turns whatever pyarrow raises on a part into that error, for every
  reader of log parts (`scan`, the numpy kernels in `carto_cli.score`). Every read verifies the
  Parquet page checksums where the writer stored them (`storage.open_parquet`). The CLI leaves such
  a part out with `--skip-corrupt` too: it scores again without it (`carto_cli.cli.app`).
- a required column missing or of the wrong kind, null values in a required column: error naming
  the file and the column.
Hidden files and unfinished parts (`.tmp`) are never read: the shim renames a part only when whole.
A log may also be an object-store URL (`s3://bucket/prefix/`, see `carto_cli.io.storage`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from carto_cli.errors import CartoOutputError, LogFormatError, UnreadablePartError, first_line
from carto_cli.io import replays, storage
from carto_cli.io.storage import Location
from carto_cli.log import schema

# Rows per batch when a scan reads a part (`scan_paths`): bounds the memory of the decoded lists.
SCAN_BATCH_ROWS = 262_144
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
    outputs: list[tuple[Location, str]] = field(default_factory=list)  # carto's own files left out (path, kind)
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
    """Read and check one part's footer. Raises LogFormatError naming the file and the fix
    (CartoOutputError for one of carto's own outputs)."""
    try:
        pf = storage.open_parquet(path)
    except (pa.ArrowInvalid, OSError) as exc:
        what = _what_file(path)
        if what is not None:
            raise LogFormatError(f"{path}: {what}, not a log part (a Parquet file); pass the log directory "
                                 "the training run wrote (a dataset goes to `carto score --data`)") from None
        reason = f"not a readable Parquet file ({first_line(exc)})"
        raise UnreadablePartError(
            f"{path}: {reason}; if it is a truncated part, remove it or pass --skip-corrupt", reason
        ) from None
    arrow_schema = pf.schema_arrow
    provenance = (pf.metadata.metadata or {}).get(b"carto.provenance")  # carto's own artefacts (`io.artifacts`)
    if provenance is not None:
        kind = _output_kind(provenance)
        raise CartoOutputError(f"{path}: a carto {kind} file, not a log part; pass the log directory the "
                               "training run wrote", kind)
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
            if stats is not None and stats.has_min_max and schema.COLUMN_KINDS[name] in ("integer", "float") \
                    and stats.min > stats.max:  # the footer is damaged: nothing planned from it would hold
                reason = f"its footer's statistics of '{name}' are inverted (min {stats.min} > max {stats.max})"
                raise UnreadablePartError(f"{path}: {reason}; the part is damaged: restore it, remove it, "
                                          "or pass --skip-corrupt to leave it out", reason, path)
            if total is None or stats is None or not stats.has_null_count:
                total = None
                continue
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


def _output_kind(provenance: bytes) -> str:
    try:
        return str(json.loads(provenance).get("kind", "output"))
    except (ValueError, AttributeError):
        return "output"


def _what_file(path: Location) -> str | None:
    """What a local file that is not Parquet looks like, from its first bytes: JSON Lines, JSON,
    CSV or text (None: nothing recognisable, e.g. a truncated part)."""
    if not isinstance(path, Path):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    text = head.lstrip()
    if head.startswith(b"PAR1"):  # a Parquet file cut short: a damaged part, not another kind of file
        return None
    if text.startswith(b"{"):
        return "a JSON Lines file" if b"\n{" in head or path.suffix in (".jsonl", ".ndjson") else "a JSON file"
    if text.startswith(b"["):
        return "a JSON file"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a CSV file" if path.suffix == ".csv" else "a text file"
    return None


def open_logs(
    paths: Sequence[str | os.PathLike[str] | Location],
    *,
    skip_corrupt: bool = False,
    on_part: Callable[[Location], None] | None = None,
    left_out: dict[Location, str] | None = None,
) -> LogSet:
    """Discover and check every part. `on_part` is called once per part (for a progress bar).
    `left_out`: parts found damaged by an earlier read (path -> reason), skipped without a look."""
    logset = LogSet(parts=[])
    named = {storage.location(p) for p in paths}
    for path in discover(paths):
        if left_out and path in left_out:
            logset.skipped.append((path, left_out[path]))
            if on_part is not None:
                on_part(path)
            continue
        try:
            part = inspect_part(path)
        except CartoOutputError as exc:
            if path in named:  # passed by name: the user meant it as a part
                raise
            logset.outputs.append((path, exc.kind))  # in a directory passed: carto's own file, left out
            continue
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
        if logset.outputs and not logset.skipped:
            raise LogFormatError(_only_outputs(paths, logset.outputs))
        raise LogFormatError(
            f"{', '.join(map(str, paths))}: every part was skipped as unreadable; nothing to score"
        )
    _check_sample_id_types(logset.parts)
    _check_required_nulls(logset.parts)
    logset.parts, logset.replayed_rows = replays.apply(logset.parts)
    return logset


def _only_outputs(paths: Sequence, outputs: list[tuple[Location, str]]) -> str:
    """The error for directories that hold carto's outputs and no log part: where the logs may be."""
    names = ", ".join(sorted({Path(str(p)).name for p, _ in outputs}))
    where = [Path(str(storage.location(p))) / sub for p in paths for sub in ("carto_logs", "logs")
             if isinstance(storage.location(p), Path) and (Path(str(storage.location(p))) / sub).is_dir()]
    hint = f"the logs are in {where[0]}" if where else "pass the log directory the training run wrote"
    return f"{', '.join(map(str, paths))}: only carto's own outputs ({names}), no log part; {hint}"


def sample_id_dtype(parts: Iterable[LogPart]) -> pl.DataType:
    """UInt64 when every part stores unsigned ids, else Int64 (see `_check_sample_id_types`)."""
    unsigned = [pa.types.is_unsigned_integer(p.arrow_schema.field(schema.SAMPLE_ID).type) for p in parts]
    return pl.UInt64 if all(unsigned) else pl.Int64


def scan(logset: LogSet, columns: Sequence[str]) -> pl.LazyFrame:
    """A lazy frame over every part of a checked log set (see `scan_paths`)."""
    return scan_paths([str(p.path) for p in logset.parts], columns, sample_id_dtype=sample_id_dtype(logset.parts))


def scan_paths(paths: Sequence[str], columns: Sequence[str], *, sample_id_dtype: pl.DataType) -> pl.LazyFrame:
    """A lazy frame over the parts at `paths` with `columns`, each cast to one dtype across parts.

    Optional columns a part lacks read as nulls; unknown columns are ignored. The parts are read
    by pyarrow, in order, SCAN_BATCH_ROWS rows at a time, as the query pulls them (a Polars IO
    source): so every page checksum is verified (Polars' own reader does not verify them), and an
    error in any part is the `damaged` error naming that part.
    """
    dtypes = {schema.SAMPLE_ID: sample_id_dtype, **SCAN_DTYPES}
    wanted = {name: dtypes[name] for name in columns}
    locations = [storage.location(p) for p in paths]

    def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               batch_size: int | None) -> Iterator[pl.DataFrame]:
        names = list(wanted) if with_columns is None else list(with_columns)
        left = n_rows
        for path in locations:
            for frame in _part_frames(path, {name: wanted[name] for name in names}):
                if predicate is not None:
                    frame = frame.filter(predicate)
                if left is not None:
                    frame = frame.head(left)
                    left -= frame.height
                yield frame
                if left == 0:
                    return

    return register_io_source(source, schema=wanted)


def _part_frames(path: Location, dtypes: dict[str, pl.DataType]) -> Iterator[pl.DataFrame]:
    """The columns `dtypes` of the part at `path`, SCAN_BATCH_ROWS rows at a time, each cast to
    its dtype (nulls where the part lacks the column)."""
    with reading(path):
        file = storage.open_parquet(path)
        present = [name for name in dtypes if name in file.schema_arrow.names]
        for batch in file.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=present, use_threads=True):
            frame = pl.from_arrow(batch) if present else None
            yield pl.DataFrame([frame[name].cast(dtype) if name in present
                                else pl.repeat(None, batch.num_rows, dtype=dtype, eager=True).alias(name)
                                for name, dtype in dtypes.items()])


def damaged(path: Location, reason: str) -> UnreadablePartError:
    """The error for a part found damaged while it is read: names it, says why, and how to go on."""
    return UnreadablePartError(
        f"{path}: {reason}; the part is damaged: restore it, remove it, or pass --skip-corrupt to leave it out",
        reason, path)


@contextmanager
def reading(path: Location) -> Iterator[None]:
    """Turn what reading the part at `path` raises (pyarrow's thrift, page header, decompression,
    checksum and type errors; a Polars cast of a value out of range; a vanished file) into the
    `damaged` error naming it."""
    try:
        yield
    except UnreadablePartError:
        raise
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
        raise damaged(path, f"unreadable ({first_line(exc)})") from None


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
                with reading(part.path):
                    count = storage.open_parquet(part.path).read(columns=[name]).column(0).null_count
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
