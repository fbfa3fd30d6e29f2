"""What several commands share: argument types, printing JSON and numbers (opening logs: `opening`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

LogArguments = Annotated[
    list[str],
    typer.Argument(help="Log directories or part files, or object-store URLs (s3://bucket/prefix/).",
                   show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
ScoresOption = Annotated[Path, typer.Option("--scores", help="Scores file written by `carto score`.")]
# A findings file to read beside the scores (`carto inspect`, `carto report`): marks.findings_for finds it.
RecordedFindingsOption = Annotated[
    Path | None,
    typer.Option("--findings", help="Findings file written by `carto score --data` [default: the one the "
                 "scores record, else findings.parquet beside them].", show_default=False),
]
TextColumnOption = Annotated[
    str | None,
    typer.Option("--text-column", help="The dataset's text column [default: found by name].", show_default=False),
]


def emit_json(payload: dict) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
