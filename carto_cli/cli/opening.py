"""Opening the logs a command names: the parts checked under a progress display, a warning for
each part left out, and `--skip-corrupt`'s second chance (`with_logs`): a part found damaged while
the command reads it is left out too, and the command's work made again without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape

from carto_cli.cli.console import err, progress
from carto_cli.cli.lazy import lazy
from carto_cli.errors import UnreadablePartError

logs, storage = lazy("carto_cli.io.logs"), lazy("carto_cli.io.storage")


def local_paths(paths: list[str]) -> list[Path]:
    """The arguments that are local paths (object-store URLs cannot be overwritten by an output)."""
    return [p for p in map(storage.location, paths) if isinstance(p, Path)]


def open_logs(paths: list[str], skip_corrupt: bool, left_out: dict | None = None, warned: set | None = None) -> Any:
    """The checked log set (`logs.open_logs`); a warning names each part skipped (once: `warned`
    holds those already named). `left_out`: parts found damaged by an earlier try."""
    found = logs.discover(paths)
    with progress("checking log parts", total=len(found)) as advance:
        logset = logs.open_logs(paths, skip_corrupt=skip_corrupt, on_part=advance, left_out=left_out)
    if logset.outputs and (warned is None or not warned):
        names = ", ".join(f"{Path(str(p)).name} ({kind})" for p, kind in logset.outputs[:4])
        more = f" and {len(logset.outputs) - 4} more" if len(logset.outputs) > 4 else ""
        err.print(f"[yellow]Note:[/] left out carto's own files in the log directory: {escape(names)}{more}",
                  soft_wrap=True)
    for path, why in logset.skipped:
        if warned is None or path not in warned:
            err.print(f"[yellow]Warning:[/] skipped {escape(str(path))}: {escape(why)}", soft_wrap=True)
        if warned is not None:
            warned.add(path)
    return logset


def with_logs(paths: list[str], skip_corrupt: bool, work: Callable[[Any], Any]) -> tuple[Any, Any]:
    """(the log set, `work(logset)`) for the logs at `paths`. With --skip-corrupt, a part found
    damaged while `work` reads it (after its footer checked out) is left out too, with a warning
    naming it, and the work made again without it; without, its error is the one line."""
    left_out: dict = {}
    warned: set = set()
    found = set(logs.discover(paths)) if skip_corrupt else set()
    while True:
        try:
            logset = open_logs(paths, skip_corrupt, left_out, warned)
            return logset, work(logset)
        except UnreadablePartError as exc:
            if exc.path not in found or exc.path in left_out:  # not a part of these logs, or not skip_corrupt
                raise
            left_out[exc.path] = exc.reason
