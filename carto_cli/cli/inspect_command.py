"""`carto inspect`: the samples behind a quadrant or an id list, ranked, with their text (parse, call, print).

    carto inspect --quadrant hotspot-memorized --data train.parquet   # what did the model memorize?
    carto inspect --ids flagged.txt --by difficulty --json            # for scripts

The selection is `carto_cli.report.inspect`, the dataset reading `carto_cli.io.datasets`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from carto_cli.cli.console import err
from carto_cli.cli.lazy import lazy
from carto_cli.errors import OptionError

pl = lazy("polars")
artifacts, datasets, picking = lazy("carto_cli.io.artifacts"), lazy("carto_cli.io.datasets"), lazy(
    "carto_cli.report.inspect")
# picking's QUADRANT_CHOICES, DEFAULT_BY and DEFAULT_TOP, written out so that the options' help
# needs no import (tests/test_cli.py checks they agree)
QUADRANT_CHOICES = ("stable-easy", "ambiguous-hard", "hotspot-memorized", "noisy-outlier", "unplaced")
DEFAULT_BY, DEFAULT_TOP = "memorization", 20

TEXT_WIDTH = 200  # characters of text a sample at most in the terminal, fewer to fit its width (--json: all)
NEWLINE = "⏎"
# The fields of each sample in --json, after rank and the --by column (text too, with --data).
JSON_FIELDS = ("sample_id", "quadrant", "difficulty", "memorization", "forget_events", "n_seen")


def inspect_command(
    scores_path: Annotated[Path, typer.Option("--scores", help="Scores file written by `carto score`.")] = Path(
        "scores.parquet"
    ),
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The training dataset (Parquet, JSONL, CSV or a datasets directory), "
                     "to show each sample's text.", show_default=False),
    ] = None,
    quadrant: Annotated[
        str | None,
        typer.Option("--quadrant", help="Only this quadrant: " + " | ".join(QUADRANT_CHOICES) + ".",
                     show_default=False),
    ] = None,
    ids: Annotated[
        Path | None,
        typer.Option("--ids", help="Only these samples: a text file with one id a line, or a Parquet/CSV "
                     "file with a sample_id column.", show_default=False),
    ] = None,
    by: Annotated[str, typer.Option("--by", help="Rank by this numeric score column, highest first.")] = (
        DEFAULT_BY
    ),
    top: Annotated[int, typer.Option("--top", help="Show the first K samples (0: all).")] = DEFAULT_TOP,
    text_column: Annotated[
        str | None,
        typer.Option("--text-column", help="The dataset's text column [default: found by name].", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the samples as a JSON list on stdout.")] = False,
) -> None:
    """Show the samples of a quadrant or an id list, ranked, with their scores and text."""
    if text_column is not None and data is None:
        raise OptionError("--text-column names a column of --data; pass --data too")
    id_list = datasets.read_ids(ids) if ids is not None else None
    scores, _ = artifacts.read(scores_path, "scores")
    selection = picking.select(scores, quadrant=quadrant, ids=id_list, by=by, top=top, source=str(scores_path))
    dataset = datasets.open_dataset(data, text_column=text_column) if data is not None else None
    rows = selection.rows
    if dataset is not None:
        rows = picking.with_texts(rows, dataset, max_id=scores["sample_id"].max())
    if as_json:
        fields = ["rank", *dict.fromkeys([by, *JSON_FIELDS]), *(["text"] if dataset is not None else [])]
        typer.echo(json.dumps([_plain(r) for r in rows.select(fields).iter_rows(named=True)], indent=2))
        return
    what = quadrant or (f"ids in {ids}" if ids is not None else "all")
    err.print(f"carto inspect: {rows.height:,} of {selection.matched:,} {escape(what)} samples "
              f"(of {selection.total:,}) by {escape(by)}, highest first")
    if dataset is not None:
        how = "row order" if dataset.by_row_order else "sample_id"
        err.print(f"text: column '{escape(dataset.text_column)}' of {escape(str(data))}, matched by {how}")
    err.print(_table(rows, by, err.width))


def _table(rows: pl.DataFrame, by: str, width: int) -> Table:
    """The samples as a table `width` characters wide at most: the scores whole, the text cut to fit."""
    columns = ["rank", "sample_id", "quadrant", *dict.fromkeys([by, "difficulty", "memorization", "forget_events"])]
    cells = [[_cell(value, name) for value in rows[name]] for name in columns]
    widths = [max(len(name), *map(len, column)) for name, column in zip(columns, cells)]
    grid = Table(header_style="bold")
    for name, size in zip(columns, widths):
        grid.add_column(name, justify="left" if name == "quadrant" else "right", no_wrap=True, min_width=size)
    if "text" in rows.columns:
        room = max(20, min(TEXT_WIDTH, width - sum(widths) - 3 * len(widths) - 4))  # borders and padding
        grid.add_column("text", no_wrap=True, max_width=room + 2)
        cells.append([escape(_one_line(text, room)) for text in rows["text"]])
    for row in zip(*cells):
        grid.add_row(*row)
    return grid


def _cell(value: object, name: str) -> str:
    if value is None:
        return "—" if name != "quadrant" else "unplaced"
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def _one_line(text: str | None, width: int = TEXT_WIDTH) -> str:
    """Text on one line: newlines shown as ⏎, tabs and other control characters as spaces, cut to `width`."""
    if text is None:
        return "—"
    flat = "".join(NEWLINE if c == "\n" else "" if c == "\r" else " " if c.isspace() or not c.isprintable() else c
                   for c in text[: width * 2])
    return flat if len(flat) <= width and len(text) <= width * 2 else flat[: width - 1] + "…"


def _plain(row: dict) -> dict:
    """A row as JSON can hold it: NaN and infinities as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
