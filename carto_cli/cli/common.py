"""What several commands share: argument types, opening logs with warnings, printing JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from carto_cli.cli.console import err, progress
from carto_cli.cli.lazy import lazy

logs, storage = lazy("carto_cli.io.logs"), lazy("carto_cli.io.storage")

LogArguments = Annotated[
    list[str],
    typer.Argument(help="Log directories or part files, or object-store URLs (s3://bucket/prefix/).",
                   show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
ScoresOption = Annotated[Path, typer.Option("--scores", help="Scores file written by `carto score`.")]


def emit_json(payload: dict) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def local_paths(paths: list[str]) -> list[Path]:
    """The arguments that are local paths (object-store URLs cannot be overwritten by an output)."""
    return [p for p in map(storage.location, paths) if isinstance(p, Path)]


def open_logs(paths: list[str], skip_corrupt: bool):
    """The log set of `paths`, with a progress bar and a warning naming each part left out."""
    found = logs.discover(paths)
    with progress("checking log parts", total=len(found)) as advance:
        logset = logs.open_logs(found, skip_corrupt=skip_corrupt, on_part=advance)
    for path, why in logset.skipped:
        err.print(f"[yellow]Warning:[/] skipped {escape(str(path))}: {escape(why)}", soft_wrap=True)
    return logset
