"""`carto inspect`: the samples behind a quadrant or an id list, ranked, with their text (parse, call, print).

    carto inspect --quadrant hotspot-memorized --data train.parquet   # what did the model memorize?
    carto inspect --ids flagged.txt --by difficulty --json            # for scripts
    carto inspect --finding 0 --data train.parquet                    # every copy of one memorized string

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
from rich.text import Text

from carto_cli.cli.common import RecordedFindingsOption, ScoresOption, TextColumnOption
from carto_cli.cli.console import err
from carto_cli.cli.lazy import lazy
from carto_cli.errors import ChoiceError, OptionError

pl = lazy("polars")
artifacts, datasets, picking = lazy("carto_cli.io.artifacts"), lazy("carto_cli.io.datasets"), lazy(
    "carto_cli.report.inspect")
marks = lazy("carto_cli.report.marks")
# picking's QUADRANT_CHOICES, DEFAULT_BY and DEFAULT_TOP, written out so that the options' help
# needs no import (tests/test_cli.py checks they agree)
QUADRANT_CHOICES = ("stable-easy", "ambiguous-hard", "hotspot-memorized", "noisy-outlier", "unplaced")
DEFAULT_BY, DEFAULT_TOP = "memorization", 20

TEXT_LINES, TEXT_MAX = 4, 400  # a sample's text: at most this many lines of its column, and characters
NEWLINE = "⏎"
OPEN, CLOSE, MARK = "⟦", "⟧", "bold reverse"  # a memorized string: the brackets show in a pipe too
# The fields of each sample in --json, after rank and the --by column (text too, with --data).
JSON_FIELDS = ("sample_id", "quadrant", "difficulty", "memorization", "forget_events", "n_seen")


def inspect_command(
    scores_path: ScoresOption = Path("scores.parquet"),
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
    finding: Annotated[
        int | None,
        typer.Option("--finding", help="Only the samples that hold this finding (every copy; `carto findings` "
                     "lists them).", show_default=False),
    ] = None,
    findings_path: RecordedFindingsOption = None,
    by: Annotated[str, typer.Option("--by", help="Rank by this numeric score column, highest first.")] = (
        DEFAULT_BY
    ),
    top: Annotated[int, typer.Option("--top", help="Show the first K samples (0: all).")] = DEFAULT_TOP,
    text_column: TextColumnOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the samples as a JSON list on stdout.")] = False,
) -> None:
    """Show the samples of a quadrant, an id list or a finding, ranked, with their scores and text."""
    if quadrant is not None and quadrant not in QUADRANT_CHOICES:  # a malformed command line, before any read
        raise ChoiceError(f"--quadrant must be one of {', '.join(QUADRANT_CHOICES)}; got '{quadrant}'")
    if text_column is not None and data is None:
        raise OptionError("--text-column names a column of --data; pass --data too")
    if sum(x is not None for x in (quadrant, ids, finding)) > 1:
        raise OptionError("--quadrant, --ids and --finding choose the samples in different ways; pass one of them")
    id_list = datasets.read_ids(ids) if ids is not None else None
    scores, prov = artifacts.read(scores_path, "scores")
    found = marks.findings_for(scores_path, prov, findings_path)
    if finding is not None:
        if found is None:
            raise OptionError(f"--finding needs the findings file: {scores_path} records none and there is no "
                              f"{marks.FINDINGS_NAME} beside it; pass --findings FILE (written by "
                              "`carto score --data`)")
        id_list = marks.carriers(found[0], finding, found[1])
    selection = picking.select(scores, quadrant=quadrant, ids=id_list, by=by, top=top, source=str(scores_path),
                               ids_from=f"--finding {finding}" if finding is not None else "--ids")
    dataset = datasets.open_dataset(data, text_column=text_column) if data is not None else None
    rows = selection.rows
    if dataset is not None:
        rows = picking.with_texts(rows, dataset, max_id=scores["sample_id"].max())
        rows = marks.with_marks(rows, found[0] if found is not None else None, finding)
    if as_json:
        extra = [c for c in ("finding", "text", "marked") if c in rows.columns]
        fields = ["rank", *dict.fromkeys([by, *JSON_FIELDS]), *extra]
        typer.echo(json.dumps([_plain(r) for r in rows.select(fields).iter_rows(named=True)], indent=2))
        return
    err.print(escape(_headline(rows.height, selection, quadrant=quadrant, ids=ids, finding=finding, by=by)))
    if dataset is not None:
        how = "row order" if dataset.by_row_order else "sample_id"
        err.print(f"text: column '{escape(dataset.text_column)}' of {escape(str(data))}, matched by {how}")
    _print_findings_note(rows, found, finding, scores)
    err.print(_table(rows, by, err.width))


def _headline(shown: int, selection, *, quadrant: str | None, ids: Path | None, finding: int | None,
              by: str) -> str:
    """`carto inspect: the first 5 of the 504 hotspot-memorized samples (of 2,025) by ...`, in words."""
    matched, total = selection.matched, selection.total
    noun = "sample" if matched == 1 else "samples"
    if quadrant is not None:
        what = f"{quadrant} {noun}"
    elif ids is not None:
        what = f"{noun} listed in {ids}"
    elif finding is not None:
        what = f"{noun} that hold finding {finding}"
    else:
        what = noun
    of_all = "" if quadrant is None and ids is None and finding is None else f" (of {total:,})"
    if shown == matched:
        count = f"the {matched:,} {what}" if matched != 1 else f"the one {what}"
    else:
        count = f"the first {shown:,} of the {matched:,} {what}"
    return f"carto inspect: {count}{of_all}, by {by}, highest first"


def _print_findings_note(rows: pl.DataFrame, found, finding: int | None, scores: pl.DataFrame) -> None:
    """Which finding is marked and how, or why nothing is."""
    if found is None:
        if "finding" in scores.columns and "text" in rows.columns:
            err.print("[yellow]Note:[/] the scores have findings, but no findings file was found (none recorded, "
                      f"no {marks.FINDINGS_NAME} beside them): pass --findings FILE to mark the memorized strings")
        return
    frame, path = found
    if finding is not None:
        row = frame.filter(pl.col("finding") == finding).row(0, named=True)
        kind = "public" if row["public"] else "private"
        err.print(f"finding {finding} ({kind}, {row['copies'] or 0:,} copies in {row['carriers'] or 0:,} samples, "
                  f"evidence {row['evidence']:.1f}): {escape(_flat(row['text']))}")
    if "marked" in rows.columns:
        which = f"finding {finding}" if finding is not None else "each sample's strongest private finding"
        err.print(f"marked {OPEN}like this{CLOSE}: {which}, from {escape(str(path))}")


def _table(rows: pl.DataFrame, by: str, width: int) -> Table:
    """The samples as a table `width` characters wide at most: the scores whole, the text wrapped in
    the room left (up to TEXT_LINES lines; around the marked string where it would be cut off)."""
    columns = ["rank", "sample_id", "quadrant", *dict.fromkeys([by, "difficulty", "memorization", "forget_events"])]
    if "finding" in rows.columns:
        columns.append("finding")
    cells = [[_cell(value, name) for value in rows[name]] for name in columns]
    widths = [max(len(name), *map(len, column)) for name, column in zip(columns, cells)]
    grid = Table(header_style="bold")
    for name, size in zip(columns, widths):
        grid.add_column(name, justify="left" if name == "quadrant" else "right", no_wrap=True, min_width=size)
    if "text" in rows.columns:
        room = max(20, width - sum(widths) - 3 * len(widths) - 4)  # borders and padding
        grid.add_column("text", width=room, no_wrap=True)
        spans = rows["marked"].to_list() if "marked" in rows.columns else [[]] * rows.height
        cells.append([_text_cell(text, [tuple(s) for s in marked or []], room)
                      for text, marked in zip(rows["text"], spans)])
    for row in zip(*cells):
        grid.add_row(*row)
    return grid


def _text_cell(text: str | None, spans: list[tuple[int, int]], room: int) -> Text | str:
    """A sample's text, folded into lines of `room` characters: newlines as ⏎, the marked strings
    bold, reversed and bracketed, cut with … after TEXT_LINES lines (around the first marked
    string where it would be cut off). A Rich Text, not markup: shown as written."""
    if text is None:
        return "—"
    limit = min(TEXT_MAX, TEXT_LINES * room) - 2 - 2 * len(spans)  # the ellipses and brackets fit too
    start, end = marks.window(text, spans, max(1, limit))
    cell = Text("…" if start else "")
    for piece, marked in marks.pieces(text, spans, start, end):
        cell.append(f"{OPEN}{_flat(piece)}{CLOSE}" if marked else _flat(piece), style=MARK if marked else None)
    if end < len(text):
        cell.append("…")
    return Text("\n").join(cell.divide(range(room, len(cell), room)))


def _flat(text: str) -> str:
    """Text on one line: newlines shown as ⏎, carriage returns dropped, tabs and other control
    characters as spaces."""
    return "".join(NEWLINE if c == "\n" else "" if c == "\r" else " " if c.isspace() or not c.isprintable() else c
                   for c in text)


def _cell(value: object, name: str) -> str:
    if value is None:
        return "—" if name != "quadrant" else "unplaced"
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(str(value))


def _plain(row: dict) -> dict:
    """A row as JSON can hold it: NaN and infinities as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
