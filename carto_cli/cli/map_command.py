"""`carto map`: the command-line face of `carto_cli.report.maps` (parse, call, print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from carto_cli.cli.console import err, progress
from carto_cli.cli.lazy import lazy

artifacts, datasets, maps = lazy("carto_cli.io.artifacts"), lazy("carto_cli.io.datasets"), lazy("carto_cli.report.maps")
SCATTER_MAX = 20_000  # maps.SCATTER_MAX, written out so that the option's help needs no import (tested equal)


def map_command(
    scores_path: Annotated[Path, typer.Option("--scores", help="Scores file written by `carto score`.")] = Path(
        "scores.parquet"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Picture to write: .png, .svg or .pdf.")] = Path("map.png"),
    x: Annotated[str, typer.Option("--x", help="Column on the horizontal axis.")] = "difficulty",
    y: Annotated[str, typer.Option("--y", help="Column on the vertical axis.")] = "memorization",
    color: Annotated[str, typer.Option("--color", help="quadrant | correctness | a numeric column (scatter).")
                     ] = "quadrant",
    highlight: Annotated[Path | None, typer.Option(
        "--highlight", help="Sample ids to ring: a text file, one per line, or Parquet/CSV with sample_id.")] = None,
    scatter_max: Annotated[int, typer.Option("--scatter-max", min=0,
                                             help="Up to this many samples a scatter, above a binned density.")
                           ] = SCATTER_MAX,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")] = False,
) -> None:
    """Draw the data map: two score columns against each other, with thresholds and marginals."""
    artifacts.ensure_not_input(out, [scores_path])
    scores, prov = artifacts.scan(scores_path, "scores")
    ids = datasets.read_ids(highlight, option="--highlight") if highlight is not None else None
    with progress(f"drawing the map of {scores_path.name}"):
        facts = maps.draw_map(scores, prov, out, x=x, y=y, color=color, highlight=ids, scatter_max=scatter_max,
                              title=f"carto data map of {scores_path.name}")
    if as_json:
        typer.echo(json.dumps({"out": str(out), "samples": facts.samples, "left_out": facts.left_out,
                               "mode": facts.mode, "x": x, "y": y, "color": color,
                               "quadrants": facts.quadrant_counts, "highlighted": facts.highlighted,
                               "zeros": facts.zeros}))
        return
    err.print(f"carto map: {facts.samples:,} samples, {x} against {y}, as a {facts.mode}"
              + (f" ({facts.left_out:,} without both values left out)" if facts.left_out else "")
              + (f"; the {facts.zeros:,} at {y} 0 ({100 * facts.zeros / facts.samples:.0f}%) in a strip of their own"
                 if facts.zeros else "")
              + (f"; {facts.highlighted:,} of {len(ids):,} highlighted ids found" if ids is not None else ""))
    err.print(f"wrote {escape(str(out))}")

