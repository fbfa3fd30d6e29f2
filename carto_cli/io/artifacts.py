"""Artefacts carto writes (scores, manifests, weights): provenance, atomic writes, checked reads.

Every artefact is a Parquet file whose key-value metadata holds `carto.provenance`, a JSON object
with the carto version, the kind of artefact, its inputs (with sizes or digests), and every
parameter that produced it. No timestamps: the same inputs and parameters give byte-identical files.
Files are written under a temporary name and renamed, so a crash never leaves half a file behind a
name carto reported as written, and a previous good file is replaced only by a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from carto_cli.errors import OptionError, ScoresFormatError, first_line
from carto_cli.log.durable import write_atomic
from carto_cli.version import __version__

PROVENANCE_KEY = "carto.provenance"
SIDECAR_SUFFIX = ".json"

# Columns a file must have to be read back as each kind of artefact.
REQUIRED = {
    "scores": ("sample_id", "difficulty", "memorization", "forget_events", "n_seen", "quadrant"),
    "manifest": ("sample_id", "keep", "quadrant"),
    "weights": ("sample_id", "weight", "quadrant"),
    "state": ("sample_id", "n_seen", "forget_events", "last_step", "last_correct"),
    "findings": ("finding", "text", "tokens", "evidence", "carriers", "public", "copies_at"),
    "mask": ("sample_id", "start", "length"),
}


def provenance(kind: str, *, inputs: list[dict[str, Any]], parameters: dict[str, Any], **extra: Any) -> dict:
    """The provenance record of an artefact: what made it, from what, with which settings."""
    return {"tool": "carto", "carto_version": __version__, "kind": kind, "inputs": inputs,
            "parameters": parameters, **extra}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_not_input(out: Path, inputs: list[Path], option: str = "--out") -> None:
    """Refuse to write over a file the user passed in: nothing the user passed in is modified."""
    for path in inputs:
        if path.exists() and out.exists() and os.path.samefile(out, path):
            raise OptionError(f"{option} {out} is also an input; choose another output path")
        if path.is_dir() and out.resolve().is_relative_to(path.resolve()):
            raise OptionError(
                f"{option} {out} is inside the input directory {path}, where it would be read as "
                "input next time; write it elsewhere"
            )


def write(frame: pl.DataFrame | pl.LazyFrame, path: Path, prov: dict, *, sidecar: bool = False) -> None:
    """Write `frame` (streamed, in order) with its provenance atomically, and a `<path>.json`
    sidecar when asked. The provenance goes into the file's key-value metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {PROVENANCE_KEY: json.dumps(prov, sort_keys=True)}
    # zstd level 1: on 10M scores, half the time of the default level for a 5% larger file
    write_atomic(
        path, lambda tmp: frame.lazy().sink_parquet(tmp, compression="zstd", compression_level=1, metadata=meta)
    )
    if sidecar:
        text = json.dumps(prov, indent=2, sort_keys=True) + "\n"
        write_atomic(Path(f"{path}{SIDECAR_SUFFIX}"), lambda tmp: tmp.write_text(text))


def read_provenance(path: Path) -> dict | None:
    """The provenance record of a carto artefact, or None when the file has none."""
    raw = (pq.read_metadata(path).metadata or {}).get(PROVENANCE_KEY.encode())
    return json.loads(raw) if raw else None


def read(path: Path, kind: str) -> tuple[pl.DataFrame, dict]:
    """Read an artefact of `kind`, checking it is one carto wrote. Raises ScoresFormatError."""
    prov = _checked(path, kind)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScoresFormatError(f"{path}: not a readable Parquet file ({first_line(exc)}); "
                                f"pass a {kind} file written by carto") from None
    return pl.from_arrow(table), prov


def scan(path: Path, kind: str) -> tuple[pl.LazyFrame, dict]:
    """`read`, lazily: the same checks (from the footer), the rows left on disk."""
    return pl.scan_parquet(path), _checked(path, kind)


def _checked(path: Path, kind: str) -> dict:
    """The provenance of the artefact at `path`, after checking from its footer that it exists, is a
    carto file of `kind` and has the columns that kind needs. Raises ScoresFormatError."""
    option = {"scores": "--scores", "findings": "--findings"}.get(kind)
    if not path.exists():
        hint = {"scores": "run `carto score LOGS` first",
                "findings": "run `carto score LOGS --data TRAIN` first"}.get(kind, f"pass a {kind} file")
        raise ScoresFormatError(f"{path}: no such file; {hint}" + (f" (or pass {option} PATH)" if option else ""))
    try:
        prov = read_provenance(path)
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScoresFormatError(f"{path}: not a readable Parquet file ({first_line(exc)}); "
                                f"pass a {kind} file written by carto") from None
    if not prov or prov.get("kind") != kind:
        found = prov.get("kind") if prov else "no carto provenance"
        raise ScoresFormatError(
            f"{path}: not a carto {kind} file ({found}); pass the output of `carto "
            f"{'score' if kind == 'scores' else kind}`"
        )
    missing = [c for c in REQUIRED[kind] if c not in names]
    if missing:
        raise ScoresFormatError(f"{path}: {kind} file lacks column(s) {', '.join(missing)}; "
                                "re-create it with this carto version")
    return prov
