"""Durable files: write under a hidden temporary name, fsync, rename, fsync the directory.

A reader never sees a half-written file, and a file carto reported as written survives a crash.
Used by the shim for log parts and by `artifacts` for scores, manifests and weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from carto_cli.log.schema import TMP_SUFFIX


def write_atomic(path: Path, write_to: Callable[[Path], object]) -> None:
    """Run `write_to(tmp)` on `.<name>.tmp` next to `path`, make it durable, rename it to `path`."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    try:
        write_to(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    """fsync a file or directory; a no-op where the directory cannot be opened or synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)
