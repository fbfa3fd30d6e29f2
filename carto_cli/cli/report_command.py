"""`carto report`: one self-contained HTML page about a scores file (parse, call, print).

    carto report --scores scores.parquet --logs run/logs --data train.parquet --out report.html
    carto report --scores scores.parquet --data train.parquet --findings findings.parquet   # the memorized strings

The page is built by `carto_cli.report.html`; it opens with no network (pictures embedded).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from carto_cli.cli.common import JsonOption, RecordedFindingsOption, ScoresOption, TextColumnOption
from carto_cli.cli.console import err
from carto_cli.cli.lazy import lazy
from carto_cli.errors import OptionError

artifacts, datasets = lazy("carto_cli.io.artifacts"), lazy("carto_cli.io.datasets")
logs, storage, schema = lazy("carto_cli.io.logs"), lazy("carto_cli.io.storage"), lazy("carto_cli.log.schema")
page, marks = lazy("carto_cli.report.html"), lazy("carto_cli.report.marks")
DEFAULT_FRAC, DEFAULT_TOP = 0.1, 10  # page's, written out so that the options' help needs no import (tested equal)

SUFFIXES = (".html", ".htm")


def report_command(
    scores_path: ScoresOption = Path("scores.parquet"),
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write.")] = Path("report.html"),
    log_paths: Annotated[
        list[str] | None,
        typer.Option("--logs", help="The training log (repeat for several paths), for the learning curves.",
                     show_default=False),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The training dataset (Parquet, JSONL, CSV or a datasets directory), "
                     "to show the top samples' texts.", show_default=False),
    ] = None,
    text_column: TextColumnOption = None,
    findings_path: RecordedFindingsOption = None,
    frac: Annotated[float, typer.Option("--frac", help="Show what a prune of this fraction would remove, in [0, 1).")
                    ] = DEFAULT_FRAC,
    top: Annotated[int, typer.Option("--top", help="The first K samples of each quadrant (0: none).")
                   ] = DEFAULT_TOP,
    as_json: JsonOption = False,
) -> None:
    """Write one self-contained HTML page: map, quadrants, distributions, curves, exports, samples."""
    page.check_options(frac=frac, top=top)
    if out.suffix.lower() not in SUFFIXES:
        raise OptionError(f"--out {out}: the report is an HTML page; name it with .html")
    if text_column is not None and data is None:
        raise OptionError("--text-column names a column of --data; pass --data too")
    local_logs = [p for p in map(storage.location, log_paths or []) if isinstance(p, Path)]
    artifacts.ensure_not_input(out, [scores_path, *local_logs, *([data] if data is not None else []),
                                     *([findings_path] if findings_path is not None else [])])
    page.require_matplotlib()
    scores, prov = artifacts.read(scores_path, "scores")
    found = marks.findings_for(scores_path, prov, findings_path)
    dataset = datasets.open_dataset(data, text_column=text_column) if data is not None else None
    curves = digest = None
    if log_paths:
        logset = logs.open_logs(log_paths)
        digest = logset.digest()
        curves = page.learning_curves(logs.scan(logset, [schema.SAMPLE_ID, *page.CURVE_COLUMNS]))
    command = _as_run(scores=scores_path, logs=log_paths or [], data=data, text_column=text_column,
                      findings=findings_path, frac=frac, top=top, out=out)
    report = page.build_report(scores, prov, scores_path=scores_path, scores_sha256=artifacts.file_digest(scores_path),
                               frac=frac, top=top, dataset=dataset, curves=curves, log_digest=digest,
                               findings=found[0] if found else None, findings_path=found[1] if found else None,
                               command=command)
    text = page.render(report)
    page.write_report(text, out)
    size = len(text.encode("utf-8"))
    counts = {r["quadrant"]: r["samples"] for r in report.quadrants}
    if as_json:
        typer.echo(json.dumps({"out": str(out), "bytes": size, "samples": report.samples, "quadrants": counts,
                               "figures": [f.key for f in report.figures],
                               "epochs": None if curves is None else curves.height, "pruned": report.pruned,
                               "top": top, "texts": dataset is not None,
                               "findings": None if found is None else found[0].height}))
        return
    what = [f"{report.samples:,} samples", f"{len(report.figures)} pictures",
            f"a prune of {frac:g} removing {report.pruned:,}"]
    if curves is not None:
        what.append(f"learning curves over {curves.height} epoch(s)")
    if found is not None:
        what.append(f"{found[0].height:,} memorized string(s) from {escape(str(found[1]))}")
    if top:
        what.append(f"the top {top} of each quadrant" + (" with their texts" if dataset is not None else ""))
    err.print(f"carto report: {', '.join(what)}")
    err.print(f"wrote {escape(str(out))} ({size / 1024:,.0f} KiB, self-contained: opens with no network)")


def _as_run(*, scores: Path, logs: list[str], data: Path | None, text_column: str | None, findings: Path | None,
            frac: float, top: int, out: Path) -> str:
    """The command line that made the page, every option spelled out (defaults too), quoted for a shell."""
    argv = ["carto", "report", "--scores", str(scores)]
    for path in logs:
        argv += ["--logs", path]
    for option, value in (("--data", data), ("--text-column", text_column), ("--findings", findings)):
        if value is not None:
            argv += [option, str(value)]
    argv += ["--frac", f"{frac:g}", "--top", str(top), "--out", str(out)]
    return shlex.join(argv)
