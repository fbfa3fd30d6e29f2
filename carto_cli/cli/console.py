"""The Rich console every command prints to: stderr, so stdout stays for data (`--json`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

err = Console(stderr=True, highlight=False, soft_wrap=True)
# Pipes and files: Rich would assume 80 columns and truncate the tables, so 120, unless COLUMNS
# says how wide (Rich reads it: `COLUMNS=160 carto inspect ... 2> out.txt`).
if not err.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
    err.width = 120


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A Rich progress display on stderr, drawn only when stderr is a terminal (pipes, files and
    CI logs stay quiet); yields an advance() callable. Without `total`, a spinner and the time."""
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda *_: bar.advance(task)
