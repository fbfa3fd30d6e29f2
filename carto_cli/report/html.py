"""The report: everything carto knows about a scores file, as one self-contained HTML page.

    scores, prov = artifacts.read(path, "scores")
    curves = learning_curves(logs.scan(logs.open_logs(["run/logs"]), ["sample_id", *CURVE_COLUMNS]))
    report = build_report(scores, prov, scores_path=path, scores_sha256=artifacts.file_digest(path),
                          frac=0.1, top=10, curves=curves)
    write_report(render(report), Path("report.html"))

What it holds, top to bottom: the quadrant table (counts, shares, mean scores, thresholds); the data
map by quadrant and, up to `maps.SCATTER_MAX` samples, by correctness (`carto_cli.report.maps`);
the distributions of difficulty and memorization with their thresholds; the learning curves per
epoch from the log (mean loss and share of presentations counted correct), when a log is given;
what `carto prune --frac` (by memorization, its default) and `carto weights` (default multipliers)
would do to each quadrant, computed by their own functions in `carto_cli.export.manifests`; the
top K samples of each quadrant by memorization, as `carto inspect` ranks them, with their text when
a dataset is given; and the provenance of the scores file.

The page makes no request: the pictures are PNGs drawn with Matplotlib (the `plot` extra) and
embedded as base64 `data:` URIs, the style is inline, there is no script, no font and no link to
anything, and a Content-Security-Policy meta tag (`default-src 'none'`) makes the browser refuse
any request the page might still contain. Every string that comes from a file (texts, paths,
provenance) is HTML-escaped. No timestamps: the same inputs give the same page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from carto_cli.errors import MissingDependencyError, OptionError
from carto_cli.export import manifests
from carto_cli.io.datasets import Dataset
from carto_cli.log import schema
from carto_cli.log.durable import write_atomic
from carto_cli.report import inspect as picking
from carto_cli.report import maps
from carto_cli.score import quadrants as q
from carto_cli.version import __version__

DEFAULT_FRAC = 0.1
DEFAULT_TOP = 10
TEXT_CHARS = 2_000  # characters of a sample's text shown at most (the rest is counted)
HIST_BINS = 60
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CURVE_COLUMNS = (schema.EPOCH, schema.LOSS, schema.CORRECT)
SAMPLE_COLUMNS = ("rank", "sample_id", "memorization", "difficulty", "forget_events", "n_seen")


@dataclass(frozen=True)
class Figure:
    """One embedded picture: a PNG and what it shows (its alt text and caption)."""

    key: str
    png: bytes
    caption: str


@dataclass
class Report:
    """Everything the page shows, computed; `render` only formats it."""

    scores_name: str
    scores_sha256: str
    provenance: dict
    samples: int
    quadrants: list[dict]  # quadrants.summary rows
    thresholds: dict
    frac: float
    pruned: int
    pruned_without_evidence: int
    exports: list[dict]  # per quadrant: samples, pruned, multiplier, weight
    top: int
    top_samples: dict[str, pl.DataFrame]  # quadrant -> ranked rows (with `text` when texts were given)
    matched: dict[str, int]  # quadrant -> samples in it
    text_source: str | None
    curves: pl.DataFrame | None  # epoch, presentations, samples, mean_loss, share_correct
    log_digest: str | None
    figures: list[Figure] = field(default_factory=list)


# ------------------------------------------------------------------------------ the numbers


def check_options(*, frac: float, top: int) -> None:
    """The options' ranges, before anything is read."""
    manifests.prune_count(0, frac)  # --frac must be in [0, 1), as carto prune has it
    if top < 0:
        raise OptionError(f"--top must be >= 0 (0 leaves the samples out); got {top}")


def learning_curves(rows: pl.LazyFrame) -> pl.DataFrame:
    """Per epoch: presentations, distinct samples, mean loss and the share of presentations counted
    correct, from a log's rows (`epoch`, `loss`, `correct`; `sample_id` for the samples)."""
    return (
        rows.group_by(schema.EPOCH)
        .agg(
            pl.len().alias("presentations"),
            pl.col(schema.SAMPLE_ID).n_unique().alias("samples"),
            pl.col(schema.LOSS).mean().alias("mean_loss"),
            pl.col(schema.CORRECT).cast(pl.Float64).mean().alias("share_correct"),
        )
        .sort(schema.EPOCH)
        .collect()
    )


def export_effects(scores: pl.DataFrame, *, frac: float, forgets: bool) -> tuple[list[dict], int, int]:
    """Per quadrant, what a prune at `frac` removes (carto prune's default ranking, by memorization)
    and the weight carto weights gives (its default multipliers; None where every sample would get
    weight 0, which carto weights refuses); then the pruned total and how many of those the
    tie-break chose, not the score (`forgets`: memorization counts forget events)."""
    manifest = manifests.prune_manifest(scores, frac=frac)
    quadrant = pl.col("quadrant").fill_null(q.UNPLACED)
    pruned = dict(manifest.filter(~pl.col("keep")).group_by(quadrant).len().iter_rows())
    try:
        weights = dict(manifests.sample_weights(scores).group_by(quadrant).agg(pl.col("weight").mean()).iter_rows())
    except OptionError:  # no sample would keep any weight
        weights = {}
    counts = dict(scores.group_by(quadrant).len().iter_rows())
    rows = [{"quadrant": name, "samples": counts[name], "pruned": int(pruned.get(name, 0)),
             "multiplier": manifests.DEFAULT_MULTIPLIERS[name], "weight": weights.get(name)}
            for name in (*q.QUADRANTS, q.UNPLACED) if name in counts]
    unranked = manifests.pruned_without_evidence(scores, manifest, forgets=forgets)
    return rows, int((~manifest["keep"]).sum()), unranked


def top_samples(scores: pl.DataFrame, *, top: int, dataset: Dataset | None = None
                ) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """The `top` samples of each quadrant (and of `unplaced`, when any), ranked as `carto inspect`
    ranks them (memorization, highest first), with a `text` column from `dataset` when given; and
    each quadrant's count. `top` 0: no samples."""
    names = [row["quadrant"] for row in q.summary(scores)]
    picked = {name: picking.select(scores, quadrant=name, top=max(top, 1)) for name in names}
    matched = {name: selection.matched for name, selection in picked.items()}
    if top == 0:
        return {}, matched
    rows = {name: selection.rows for name, selection in picked.items()}
    if dataset is not None:  # one read of the dataset for every quadrant's samples
        both = picking.with_texts(pl.concat(list(rows.values())), dataset, max_id=scores["sample_id"].max())
        named = pl.col("quadrant").fill_null(q.UNPLACED)
        rows = {name: both.filter(named == name) for name in rows}
    return rows, matched


# ------------------------------------------------------------------------------ the pictures


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        raise MissingDependencyError("carto report needs Matplotlib: pip install 'carto-cli[plot]'") from None
    return MplFigure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Fail early, with the install hint, before anything is read."""
    _matplotlib()


def figures(scores: pl.DataFrame, prov: dict, curves: pl.DataFrame | None) -> list[Figure]:
    """The data map(s), the distributions and, with a log, the learning curves, as PNGs."""
    signal = f" Memorization = {prov['memorization']}." if prov.get("memorization") else ""
    found = [Figure("map", _drawn_map(scores, prov, "quadrant"),
                    "The data map: difficulty against memorization, coloured by quadrant, with the thresholds "
                    f"(dashed) and each quadrant's count.{signal}")]
    if "n_correct" in scores.columns and scores.height <= maps.SCATTER_MAX:
        found.append(Figure("map-correctness", _drawn_map(scores, prov, "correctness"),
                            "The same map coloured by correctness: the share of each sample's presentations "
                            "counted correct (n_correct / n_seen), as in Dataset Cartography."))
    found.append(Figure("distributions", _distributions(scores, prov),
                        "How difficulty and memorization are distributed over the samples, with the thresholds "
                        "the quadrants were cut at (dashed)."))
    if curves is not None and curves.height:
        found.append(Figure("curves", _curves(curves),
                            "Learning curves from the log: the mean loss and the share of presentations counted "
                            "correct, per epoch."))
    return found


def _drawn_map(scores: pl.DataFrame, prov: dict, color: str) -> bytes:
    """`carto map`'s picture (`maps.draw_map` writes a file: it is drawn in a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="carto-report-") as tmp:
        path = Path(tmp) / "map.png"
        by = "" if color == "quadrant" else f", by {color}"
        maps.draw_map(scores.lazy(), prov, path, color=color, title=f"carto data map: {scores.height:,} samples{by}")
        return path.read_bytes()


def _png(fig, canvas_cls) -> bytes:
    canvas_cls(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _distributions(scores: pl.DataFrame, prov: dict) -> bytes:
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(10, 3.4))
    cut = prov.get("thresholds") or {}
    for i, column in enumerate(("difficulty", "memorization")):
        ax = fig.add_subplot(1, 2, i + 1)
        values = scores[column].cast(pl.Float64).drop_nulls().to_numpy()
        values = values[np.isfinite(values)]
        if values.size:
            counts, edges = np.histogram(values, bins=HIST_BINS)
            ax.stairs(counts, edges, fill=True, color="#777777")
        threshold = cut.get(column)
        if threshold is not None and math.isfinite(threshold):
            ax.axvline(threshold, color="black", linewidth=0.8, linestyle="--", label=f"threshold {threshold:.4g}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel(column)
        ax.set_ylabel("samples")
        ax.set_title(f"{column}: {values.size:,} samples", fontsize=10)
    return _png(fig, canvas_cls)


def _curves(curves: pl.DataFrame) -> bytes:
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(10, 3.4))
    epochs = curves[schema.EPOCH].to_numpy()
    for i, (column, label) in enumerate((("mean_loss", "mean loss (nats)"), ("share_correct", "share correct"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(epochs, curves[column].to_numpy(), marker="o", color="#0072B2")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if column == "share_correct":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    return _png(fig, canvas_cls)


# ------------------------------------------------------------------------------ the report


def build_report(scores: pl.DataFrame, prov: dict, *, scores_path: Path, scores_sha256: str,
                 frac: float = DEFAULT_FRAC, top: int = DEFAULT_TOP, dataset: Dataset | None = None,
                 curves: pl.DataFrame | None = None, log_digest: str | None = None) -> Report:
    """Compute everything the page shows from a scores file (`scores`, its provenance `prov`)."""
    check_options(frac=frac, top=top)
    forgets = str(prov.get("memorization", "forget")).startswith("forget")
    exports, pruned, unranked = export_effects(scores, frac=frac, forgets=forgets)
    samples, matched = top_samples(scores, top=top, dataset=dataset)
    return Report(
        scores_name=str(scores_path), scores_sha256=scores_sha256, provenance=prov, samples=scores.height,
        quadrants=q.summary(scores), thresholds=prov.get("thresholds") or {}, frac=frac, pruned=pruned,
        pruned_without_evidence=unranked, exports=exports, top=top, top_samples=samples, matched=matched,
        text_source=None if dataset is None else f"column '{dataset.text_column}' of {dataset.path}, matched by "
        + ("row order" if dataset.by_row_order else "sample_id"),
        curves=curves, log_digest=log_digest, figures=figures(scores, prov, curves),
    )


def write_report(page: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))


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
    signal = report.provenance.get("memorization") or "—"
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


def _samples_section(report: Report) -> str:
    head = "<h2 id=\"samples-by-quadrant\">Top samples of each quadrant</h2>"
    if not report.top_samples:
        return f"{head}\n<p class=\"note\">Left out (<code>--top 0</code>).</p>"
    intro = (f"<p class=\"note\">The first {report.top:,} of each quadrant by memorization, highest first, as "
             "<code>carto inspect --quadrant Q</code> ranks them"
             + (f"; text: {_e(report.text_source)}" if report.text_source else
                "; pass the training dataset (<code>--data</code>) to see their texts") + ".</p>")
    parts = [head, intro]
    for name, rows in report.top_samples.items():
        columns = [c for c in (*SAMPLE_COLUMNS, "text") if c in rows.columns]
        cells = [[_text(row[c]) if c == "text" else _e(row[c]) if c == "sample_id" else _num(row[c]) for c in columns]
                 for row in rows.iter_rows(named=True)]
        if not rows.height:
            parts.append(f"<h3 id=\"top-{_e(name)}\">{_e(name)}: no samples</h3>")
            continue
        parts.append(f"<h3 id=\"top-{_e(name)}\">{_e(name)}: the first {rows.height:,} of "
                     f"{report.matched[name]:,}</h3>")
        parts.append(_table(columns, cells, cls=f"top top-{_e(name)}",
                            numeric={i for i, c in enumerate(columns) if c != "text"}))
    return "\n".join(parts)


_CONTROL = {c: "\ufffd" for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)}


def _text(value: str | None) -> str:
    """A sample's text, escaped, control characters (but newlines and tabs) shown as \ufffd, cut at TEXT_CHARS."""
    if value is None:
        return "—"
    shown = _e(value[:TEXT_CHARS].translate(_CONTROL))
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
    rows.append(("this report", f"carto {_e(__version__)} <code>carto report --frac {report.frac:g} "
                                f"--top {report.top}</code>"))
    table = "<table class=\"provenance\"><tbody>\n" + "\n".join(
        f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "\n</tbody></table>"
    param_rows = [[_e(k), _e(json.dumps(v))] for k, v in sorted(params.items())]
    return "\n".join([
        "<h2 id=\"provenance\">Provenance</h2>", table,
        _table(["parameter", "value"], param_rows, cls="parameters") if param_rows else "",
        "<details><summary>The scores file's provenance record</summary>"
        f"<pre class=\"json\">{_e(json.dumps(prov, indent=2, sort_keys=True))}</pre></details>",
    ])
