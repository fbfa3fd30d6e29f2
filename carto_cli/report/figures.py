"""The report's pictures, as PNG bytes: the data map(s) (`carto map`'s own, `carto_cli.report.maps`),
the distributions of difficulty and memorization, and the learning curves.

Matplotlib is the `plot` extra; `require_matplotlib` fails early with its install hint. The PNGs
carry no timestamp (`metadata={"Software": None}`), so the same scores give the same bytes.
"""

from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from carto_cli.errors import MissingDependencyError
from carto_cli.log import schema
from carto_cli.report import maps

HIST_BINS = 60


@dataclass(frozen=True)
class Figure:
    """One embedded picture: a PNG and what it shows (its alt text and caption)."""

    key: str
    png: bytes
    caption: str


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
    signal = f" Memorization = {maps.memorization_meaning(prov)}." if prov.get("memorization") else ""
    found = [Figure("map", _drawn_map(scores, prov, "quadrant"),
                    "The data map: difficulty against memorization, coloured by quadrant, with the thresholds "
                    "(dashed), the samples at memorization 0 in a strip of their own when there are many, the "
                    f"marginals counted on a log scale, and each quadrant's count and region in the legend.{signal}")]
    if "n_correct" in scores.columns and scores.height <= maps.SCATTER_MAX:
        found.append(Figure("map-correctness", _drawn_map(scores, prov, "correctness"),
                            "The same map coloured by correctness: the share of each sample's presentations "
                            "counted correct (n_correct / n_seen), as in Dataset Cartography."))
    found.append(Figure("distributions", _distributions(scores, prov),
                        "How difficulty and memorization are distributed over the samples (counts on a log "
                        "scale), with the thresholds the quadrants were cut at (dashed)."))
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
    """Histograms of difficulty and memorization, counted on a log scale (a tail of a few samples
    shows beside thousands), the threshold dashed and named in the title with the share of samples
    at exactly 0 (most of them, on real scores)."""
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(10, 3.4))
    cut = prov.get("thresholds") or {}
    for i, column in enumerate(("difficulty", "memorization")):
        ax = fig.add_subplot(1, 2, i + 1)
        values = scores[column].cast(pl.Float64).drop_nulls().to_numpy()
        values = values[np.isfinite(values)]
        if values.size:
            counts, edges = np.histogram(values, bins=HIST_BINS)
            ax.stairs(np.maximum(counts, 0.5), edges, baseline=0.5, fill=True, color="#777777")
            ax.set_yscale("log")
            ax.set_ylim(0.5, max(1, counts.max()) * 1.5)
        title = f"{column}: {values.size:,} samples"
        zeros = int((values == 0).sum())
        if zeros:
            title += f", {zeros:,} ({100 * zeros / values.size:.0f}%) at 0"
        threshold = cut.get(column)
        if threshold is not None and math.isfinite(threshold):
            ax.axvline(threshold, color="black", linewidth=0.8, linestyle="--")
            title += f"; high: > {threshold:.4g}"
        ax.set_xlabel(column)
        ax.set_ylabel("samples (log)")
        ax.set_title(title, fontsize=10)
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
