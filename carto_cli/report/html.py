"""The report: everything carto knows about a scores file, as one self-contained HTML page.

    scores, prov = artifacts.read(path, "scores")
    curves = learning_curves(logs.scan(logs.open_logs(["run/logs"]), ["sample_id", *CURVE_COLUMNS]))
    report = build_report(scores, prov, scores_path=path, scores_sha256=artifacts.file_digest(path),
                          frac=0.1, top=10, curves=curves)          # carto_cli.report.contents
    write_report(render(report), Path("report.html"))

What it holds, top to bottom: the quadrant table (counts, shares, mean scores, thresholds); the data
map by quadrant and, up to `maps.SCATTER_MAX` samples, by correctness (`carto_cli.report.maps`);
the distributions of difficulty and memorization with their thresholds; the learning curves per
epoch from the log (mean loss and share of presentations counted correct), when a log is given;
what `carto prune --frac` (by memorization, its default) and `carto weights` (default multipliers)
would do to each quadrant, computed by their own functions in `carto_cli.export.manifests`; with a
findings file (`carto score --data`), the memorized strings: each finding's string, a copy of it
in context (with the dataset), copies, evidence, public or private; the top K samples of each
quadrant, each ranked by the score that sets its quadrant apart (`RANKING`: memorization has one
value, 0, across most of the low-memorization quadrants on real scores, so ranking them by it
listed ids 0, 2, 3, 4), as `carto inspect --quadrant Q --by COLUMN` ranks them, with their text
(the memorized string marked) when a dataset is given; and the provenance of the scores file and
of the report (the command as run).

The page makes no request: the pictures are PNGs drawn with Matplotlib (the `plot` extra) and
embedded as base64 `data:` URIs, the style is inline, there is no script, no font and no link to
anything, and a Content-Security-Policy meta tag (`default-src 'none'`) makes the browser refuse
any request the page might still contain. Every string that comes from a file (texts, paths,
provenance) is HTML-escaped. No timestamps: the same inputs give the same page.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import polars as pl

from carto_cli.log import schema
from carto_cli.report import maps, marks
from carto_cli.report.contents import (  # noqa: F401 (the CLI's entry points, with the page's)
    CURVE_COLUMNS,
    DEFAULT_FRAC,
    DEFAULT_TOP,
    Report,
    build_report,
    check_options,
    learning_curves,
    write_report,
)
from carto_cli.report.figures import require_matplotlib  # noqa: F401
from carto_cli.version import __version__

TEXT_CHARS = 2_000  # characters of a sample's text shown at most (the rest is counted)
CONTEXT_CHARS = 240  # characters of a finding's copy in context
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
SAMPLE_COLUMNS = ("rank", "sample_id", "memorization", "difficulty", "confidence", "forget_events", "n_seen",
                  "finding")


# ------------------------------------------------------------------------------ the page

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; vertical-align: top; }
thead th { background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; break-inside: avoid; } figure img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 0.9em; }
pre.text { white-space: pre-wrap; word-break: break-all; margin: 0; font-size: 0.85em; max-width: 60em; }
pre.json { white-space: pre-wrap; font-size: 0.8em; background: #f7f7f7; padding: 0.6em; }
code { font-size: 0.9em; } table.provenance th { text-align: left; }
mark { background: #ffd54f; color: inherit; outline: 1px solid #c79a00; }
"""


def render(report: Report) -> str:
    """The page, as one string of HTML."""
    body = "\n".join([
        _header(report),
        _quadrant_section(report),
        _section("maps", "The data map", _figures(report, ("map", "map-correctness"))),
        _section("distributions", "Distributions", _figures(report, ("distributions",))),
        _curves_section(report),
        _exports_section(report),
        _findings_section(report),
        _samples_section(report),
        _provenance_section(report),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>carto report: {_e(Path(report.scores_name).name)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _e(value: object) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return _e(value)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _table(headers: list[str], rows: list[list[str]], *, cls: str, row_ids: list[str] | None = None,
           numeric: set[int] = frozenset()) -> str:
    """A table of already-escaped cells; `numeric` columns are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = []
    for i, row in enumerate(rows):
        attrs = f" data-quadrant=\"{_e(row_ids[i])}\"" if row_ids else ""
        cells = "".join(f"<td class=\"n {_e(headers[j])}\">{c}</td>" if j in numeric
                        else f"<td class=\"{_e(headers[j])}\">{c}</td>" for j, c in enumerate(row))
        lines.append(f"<tr{attrs}>{cells}</tr>")
    return f"<table class=\"{cls}\"><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(lines) + "\n</tbody></table>"


def _header(report: Report) -> str:
    signal = maps.memorization_meaning(report.provenance) or "—"
    return (f"<h1>carto report: {_e(report.scores_name)}</h1>\n"
            f"<p class=\"summary\"><span id=\"samples\">{report.samples:,}</span> samples. "
            f"Memorization = {_e(signal)}.</p>")


def _quadrant_section(report: Report) -> str:
    rows = [[_e(r["quadrant"]), f"{r['samples']:,}", f"{100 * r['share']:.1f}%", _num(r["mean_difficulty"]),
             _num(r["mean_memorization"]), _num(r["mean_forget_events"], 2), _e(r["action"])]
            for r in report.quadrants]
    table = _table(["quadrant", "samples", "share", "difficulty", "memorization", "forget events", "action"],
                   rows, cls="quadrants", row_ids=[r["quadrant"] for r in report.quadrants], numeric={1, 2, 3, 4, 5})
    t = report.thresholds

    def cut(name: str) -> str:
        quantile = t.get(f"{name}_quantile")
        if t.get(name) is None:
            return "not recorded in the scores file"
        if name == "memorization" and t[name] == 0 and report.provenance.get("findings"):
            return "&gt; 0: carries a private finding (the findings' threshold)"
        return f"&gt; {_num(t[name], 4)}" + (f" (quantile {quantile:.2f})" if quantile is not None else " (absolute)")

    return (f"<h2 id=\"quadrants\">Quadrants</h2>\n{table}\n"
            f"<p class=\"note thresholds\">High difficulty: {cut('difficulty')}; high memorization: "
            f"{cut('memorization')}. Difficulty, memorization and forget events are means per quadrant; "
            "<em>unplaced</em> samples have no early presentation or no memorization.</p>")


def _section(anchor: str, title: str, content: str) -> str:
    return f"<h2 id=\"{anchor}\">{_e(title)}</h2>\n{content}" if content else ""


def _figures(report: Report, keys: tuple[str, ...]) -> str:
    """The figures among `keys`, each an <img> whose PNG is inside the page (a data: URI)."""
    parts = []
    for f in (f for f in report.figures if f.key in keys):
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f"<figure id=\"figure-{_e(f.key)}\"><img src=\"data:image/png;base64,{data}\" "
                     f"alt=\"{_e(f.caption)}\"><figcaption>{_e(f.caption)}</figcaption></figure>")
    return "\n".join(parts)


def _curves_section(report: Report) -> str:
    if report.curves is None:
        return _section("curves", "Learning curves",
                        "<p class=\"note\">Pass the training log (<code>--logs LOGS</code>) to see them.</p>")
    rows = [[str(r[schema.EPOCH]), f"{r['presentations']:,}", f"{r['samples']:,}", _num(r["mean_loss"]),
             _num(r["share_correct"])] for r in report.curves.iter_rows(named=True)]
    table = _table(["epoch", "presentations", "samples", "mean loss", "share correct"], rows, cls="curves",
                   numeric={0, 1, 2, 3, 4})
    note = ("<p class=\"note\">From the rows of the log passed with <code>--logs</code> (replays of a restarted "
            "run left out): per epoch, the mean loss of its presentations and the share of them counted correct "
            "by the logged rule.</p>")
    return _section("curves", "Learning curves", "\n".join([_figures(report, ("curves",)), table, note]))


def _exports_section(report: Report) -> str:
    rows = [[_e(r["quadrant"]), f"{r['samples']:,}", f"{r['pruned']:,}", _share(r["pruned"], r["samples"]),
             f"{r['multiplier']:g}", _num(r["weight"], 4)] for r in report.exports]
    table = _table(["quadrant", "samples", "pruned", "pruned share", "multiplier", "weight"], rows, cls="exports",
                   row_ids=[r["quadrant"] for r in report.exports], numeric={1, 2, 3, 4, 5})
    note = (f" {report.pruned_without_evidence:,} of the pruned samples have no memorization evidence: the "
            "ranking ran out of memorized samples and the tie-break (lowest difficulty) chose them."
            if report.pruned_without_evidence else "")
    if all(r["weight"] is None for r in report.exports):
        note += " No weights: with the default multipliers every sample would get weight 0 (carto weights refuses)."
    return (f"<h2 id=\"exports\">What pruning and weighting would do</h2>\n"
            f"<p><code>carto prune --frac {report.frac:g}</code> (ranked by memorization) would remove "
            f"<span id=\"pruned\">{report.pruned:,}</span> of {report.samples:,} samples "
            f"({_share(report.pruned, report.samples)}); <code>carto weights</code> with its default multipliers "
            f"gives each sample its quadrant's multiplier, normalised so the mean weight is 1.{_e(note)}</p>\n{table}")


def _findings_section(report: Report) -> str:
    """The memorized strings, when a findings file was read: each finding's string (marked), a copy
    in context (with the dataset), copies, samples, evidence, public or private."""
    if report.findings is None:
        return ""
    t = report.findings_total
    head = "<h2 id=\"findings\">Memorized strings</h2>"
    prune = (f" <code>carto prune</code> (without <code>--frac</code>) would remove every sample that carries a "
             f"private one: <span id=\"findings-pruned\">{t['pruned']:,}</span> of {report.samples:,}; "
             "<code>carto mask</code> drops only their tokens from the loss." if t["pruned"] is not None else "")
    more = (f" The {report.findings.height:,} strongest are listed; <code>carto findings --top 0</code> lists all."
            if t["findings"] > report.findings.height else "")
    intro = (f"<p class=\"note\">{t['findings']:,} memorized string(s) in {_e(t['source'])}: {t['private']:,} "
             f"private, in {t['carriers']:,} sample(s), and {t['public']:,} public (found in the reference: "
             f"text the model may know). Evidence: the largest early loss (nats) any copy reproduced.{prune}{more}"
             + ("" if report.text_source else " Pass the training dataset (<code>--data</code>) to see a copy in "
                "context.") + "</p>")
    headers = ["finding", "string", "in context", "copies", "samples", "evidence", "kind"]
    rows = []
    for row in report.findings.iter_rows(named=True):
        context = report.contexts.get(row["finding"])
        rows.append([str(row["finding"]), f"<pre class=\"text\"><mark>{_e(_visible(row['text']))}</mark></pre>",
                     _in_context(*context) if context else "—", f"{row['copies'] or 0:,}",
                     f"{row['carriers'] or 0:,}", _num(row["evidence"], 1), "public" if row["public"] else "private"])
    if not report.text_source:
        headers.pop(2)
        rows = [r[:2] + r[3:] for r in rows]
    return "\n".join([head, intro, _table(headers, rows, cls="findings", numeric={0, *range(len(headers) - 4,
                                                                                              len(headers) - 1)})])


def _in_context(sample_id: int, text: str, spans: list[tuple[int, int]]) -> str:
    """A copy of a finding: CONTEXT_CHARS of its sample's text around it, the finding marked."""
    start, end = marks.window(text, spans, CONTEXT_CHARS)
    if not spans:
        return f"{_text(text[start:end])}<span class=\"note\">sample {sample_id:,} (not found in its text)</span>"
    return f"{_marked(text, spans, start, end)}<span class=\"note\">sample {sample_id:,}</span>"


def _marked(text: str, spans: list[tuple[int, int]], start: int, end: int) -> str:
    """text[start:end], escaped, each span in <mark>, with … where it is cut."""
    inner = "".join(f"<mark>{_e(_visible(piece))}</mark>" if marked else _e(_visible(piece))
                    for piece, marked in marks.pieces(text, spans, start, end))
    return f"<pre class=\"text\">{'…' if start else ''}{inner}{'…' if end < len(text) else ''}</pre>"


def _samples_section(report: Report) -> str:
    head = "<h2 id=\"samples-by-quadrant\">Top samples of each quadrant</h2>"
    if not report.top_samples:
        return f"{head}\n<p class=\"note\">Left out (<code>--top 0</code>).</p>"
    intro = (f"<p class=\"note\">The first {report.top:,} of each quadrant, ranked by what sets it apart (its "
             "heading says by what; on real scores the low-memorization quadrants are mostly at memorization 0, "
             "which would rank nothing): as <code>carto inspect --quadrant Q --by COLUMN</code> ranks them"
             + (f"; text: {_e(report.text_source)}" if report.text_source else
                "; pass the training dataset (<code>--data</code>) to see their texts")
             + ("; each sample's strongest private finding <mark>marked</mark>" if report.findings is not None
                and report.text_source else "") + ".</p>")
    parts = [head, intro]
    for name, rows in report.top_samples.items():
        if not rows.height:
            parts.append(f"<h3 id=\"top-{_e(name)}\">{_e(name)}: no samples</h3>")
            continue
        by = report.ranked_by[name]
        tied = (f" (every one has the same {_e(by)}: in sample_id order)" if name in report.tied else "")
        parts.append(f"<h3 id=\"top-{_e(name)}\">{_e(name)}: the first {rows.height:,} of "
                     f"{report.matched[name]:,}, by {_e(by)}, highest first{tied}</h3>")
        parts.append(_sample_table(name, rows))
    return "\n".join(parts)


def _sample_table(name: str, rows: pl.DataFrame) -> str:
    columns = [c for c in (*SAMPLE_COLUMNS, "text") if c in rows.columns]
    cells = []
    for row in rows.iter_rows(named=True):
        spans = [tuple(s) for s in row.get("marked") or []]
        cells.append([(_text(row[c]) if not spans else _marked(row[c], spans, *_shown(row[c], spans)))
                      if c == "text" else _e(row[c]) if c == "sample_id" else _num(row[c]) for c in columns])
    return _table(columns, cells, cls=f"top top-{_e(name)}", numeric={i for i, c in enumerate(columns) if c != "text"})


def _shown(text: str, spans: list[tuple[int, int]]) -> tuple[int, int]:
    return marks.window(text, spans, TEXT_CHARS)


_CONTROL = {c: "\ufffd" for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)}


def _visible(text: str) -> str:
    """Control characters (but newlines and tabs) as \ufffd."""
    return text.translate(_CONTROL)


def _text(value: str | None) -> str:
    """A sample's text, escaped, control characters (but newlines and tabs) shown as \ufffd, cut at TEXT_CHARS."""
    if value is None:
        return "—"
    shown = _e(_visible(value[:TEXT_CHARS]))
    more = f"<span class=\"note\"> … ({len(value) - TEXT_CHARS:,} more characters)</span>" \
        if len(value) > TEXT_CHARS else ""
    return f"<pre class=\"text\">{shown}</pre>{more}"


def _provenance_section(report: Report) -> str:
    prov = report.provenance
    kind = prov.get("kind", "scores")
    params = prov.get("parameters") or {}
    parts_info = prov.get("parts") or {}
    digest = parts_info.get("sha256")
    rows = [
        ("command", f"<code>carto {'score' if kind == 'scores' else _e(kind)}</code> with the parameters below"),
        ("carto version", _e(prov.get("carto_version", "—"))),
        ("inputs", "<br>".join(_e(i.get("path", i)) if isinstance(i, dict) else _e(i)
                               for i in prov.get("inputs") or []) or "—"),
        ("log digest", f"<code>{_e(digest or '—')}</code> ({_num(parts_info.get('count'))} parts, "
                       f"{_num(parts_info.get('rows'))} rows)"),
        ("memorization signal", _e(prov.get("memorization", params.get("memorization", "—")))),
        ("correctness rule", _e(prov.get("correctness_rule", "—"))),
        ("scores file", f"{_e(report.scores_name)} (sha256 <code>{_e(report.scores_sha256)}</code>)"),
    ]
    if report.log_digest is not None:
        same = "the log the scores were made from" if report.log_digest == digest else (
            "not the digest the scores record (another log, or the same parts named by other paths)")
        rows.append(("--logs digest", f"<code>{_e(report.log_digest)}</code>: {same}"))
    rows.append(("this report", f"carto {_e(__version__)}: <code>{_e(report.command)}</code>"))
    table = "<table class=\"provenance\"><tbody>\n" + "\n".join(
        f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "\n</tbody></table>"
    param_rows = [[_e(k), _e(json.dumps(v))] for k, v in sorted(params.items())]
    return "\n".join([
        "<h2 id=\"provenance\">Provenance</h2>", table,
        _table(["parameter", "value"], param_rows, cls="parameters") if param_rows else "",
        "<details><summary>The scores file's provenance record</summary>"
        f"<pre class=\"json\">{_e(json.dumps(prov, indent=2, sort_keys=True))}</pre></details>",
    ])
