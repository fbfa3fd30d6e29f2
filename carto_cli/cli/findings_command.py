"""`carto findings` and `carto mask`: the memorized strings `carto score --data` found, and the loss
mask that drops only them (parse, call, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from carto_cli.cli.common import JsonOption
from carto_cli.cli.common import emit_json as _emit_json
from carto_cli.cli.console import err
from carto_cli.cli.lazy import lazy

pl = lazy("polars")
artifacts, masks = lazy("carto_cli.io.artifacts"), lazy("carto_cli.export.masks")

FindingsOption = Annotated[Path, typer.Option("--findings", help="Findings file written by `carto score --data`.")]


def shown(text: str, width: int) -> str:
    """A finding's text on one line: newlines and tabs as visible escapes, cut to `width` with an ellipsis."""
    flat = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return flat if len(flat) <= width else flat[: max(1, width - 1)] + "…"


def findings_command(
    findings_path: FindingsOption = Path("findings.parquet"),
    top: Annotated[int, typer.Option("--top", min=0, help="Show this many findings (0: all).")] = 20,
    public: Annotated[bool, typer.Option("--public/--private-only", help="Also list public findings.")] = True,
    width: Annotated[int, typer.Option("--width", min=8, help="Characters of each string shown.")] = 48,
    as_json: JsonOption = False,
) -> None:
    """List the memorized strings `carto score --data` found: text, copies, evidence, public or private."""
    frame, prov = artifacts.read(findings_path, "findings")
    listed = frame if public else frame.filter(~pl.col("public"))
    listed = listed.sort(["public", "evidence", "finding"], descending=[False, True, False])
    if top:
        listed = listed.head(top)
    private = frame.filter(~pl.col("public"))
    carriers = (private.select(pl.col("copies_at").explode().struct.field("sample_id")).n_unique()
                if private.height else 0)
    if as_json:
        _emit_json({"findings": frame.height, "private": private.height, "public": frame.height - private.height,
                    "carriers_of_private": carriers, "parameters": prov.get("parameters"),
                    "listed": listed.drop("copies_at").to_dicts()})
        return
    err.print(f"carto findings: {frame.height:,} memorized string(s): {private.height:,} private in "
              f"{carriers:,} sample(s), {frame.height - private.height:,} public "
              f"({'no reference given: none can be public' if not _has_reference(prov) else 'found in the reference'})")
    grid = Table(header_style="bold", caption="evidence: the largest early loss (nats) any copy reproduces; "
                 "steps: first and last presentation of a copy")
    for name, justify in (("finding", "right"), ("text", "left"), ("copies", "right"), ("samples", "right"),
                          ("evidence", "right"), ("kind", "left"), ("steps", "right")):
        grid.add_column(name, justify=justify, overflow="fold" if name == "text" else "ellipsis")
    for row in listed.iter_rows(named=True):
        steps = "" if row.get("first_step") is None else f"{row['first_step']:,}-{row['last_step']:,}"
        grid.add_row(str(row["finding"]), escape(shown(row["text"], width)), f"{row['copies'] or 0:,}",
                     f"{row['carriers'] or 0:,}", f"{row['evidence']:.1f}", "public" if row["public"] else "private",
                     steps)
    err.print(grid)
    if top and frame.height > top:
        err.print(f"({frame.height - top:,} more: --top 0 lists all)")


def _has_reference(prov: dict) -> bool:
    return any(i.get("role") == "reference" for i in prov.get("inputs", []))


def mask_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Mask file to write.")] = Path("mask.parquet"),
    findings_path: FindingsOption = Path("findings.parquet"),
    include_public: Annotated[bool, typer.Option("--public", help="Mask public findings too.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Write the token spans to drop from the loss next run: every copy of every private finding."""
    artifacts.ensure_not_input(out, [findings_path])
    frame, prov = artifacts.read(findings_path, "findings")
    spans = masks.mask_spans(frame, include_public=include_public)
    samples = spans["sample_id"].n_unique()
    tokens = int(spans["length"].sum()) if spans.height else 0
    record = artifacts.provenance(
        "mask", inputs=[{"path": str(findings_path), "sha256": artifacts.file_digest(findings_path),
                         "provenance": prov}],
        parameters={"public": include_public, "label_shift": prov.get("parameters", {}).get("label_shift")},
        spans=spans.height, samples=samples, tokens=tokens)
    artifacts.write(spans, out, record, sidecar=True)
    if as_json:
        _emit_json({"out": str(out), "spans": spans.height, "samples": samples, "tokens": tokens})
        return
    err.print(f"carto mask: {spans.height:,} span(s), {tokens:,} token(s) in {samples:,} sample(s) dropped from the "
              f"loss ({'every' if include_public else 'private'} finding(s))")
    err.print(f"wrote {escape(str(out))} and {escape(str(out))}{artifacts.SIDECAR_SUFFIX}")
