"""The data map: two score columns of every sample against each other, as a picture.

GenDataCarto places samples by difficulty and memorization; Dataset Cartography (Swayamdipta et al.
2020) draws its data map the same way, variability against confidence. `draw_map` draws any two
numeric columns of a scores file (by default difficulty against memorization, with the quadrant
thresholds the scores were placed by and each quadrant's count), with their marginal
distributions:

- up to `scatter_max` samples: one point per sample, coloured by quadrant, by correctness (the share
  of a sample's presentations counted correct, n_correct / n_seen) or by any numeric column;
- more: a binned density (`bins` x `bins` counts on a log colour scale), computed by Polars over
  the lazily read file, so memory does not grow with the number of samples.

`highlight` ids are drawn on top (ringed), e.g. the carriers of known secrets. The figure is built
with Matplotlib's object API (no pyplot, no global state) and written atomically; the format
follows the file's extension (png, svg, pdf). Matplotlib is the `plot` extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from carto_cli.errors import MissingDependencyError, OptionError
from carto_cli.log.durable import write_atomic
from carto_cli.score import quadrants as q

FORMATS = ("png", "svg", "pdf")
SCATTER_MAX = 20_000
BINS = 160
# Quadrant colours (colour-blind safe, Okabe-Ito) and where each quadrant sits on the map.
_COLOURS = {q.STABLE_EASY: "#0072B2", q.AMBIGUOUS_HARD: "#E69F00", q.HOTSPOT: "#D55E00",
            q.NOISY_OUTLIER: "#CC79A7", q.UNPLACED: "#999999"}
_CORNERS = {q.STABLE_EASY: (0.02, 0.02, "left", "bottom"), q.AMBIGUOUS_HARD: (0.98, 0.02, "right", "bottom"),
            q.HOTSPOT: (0.02, 0.98, "left", "top"), q.NOISY_OUTLIER: (0.98, 0.98, "right", "top")}


@dataclass
class MapFacts:
    """What `draw_map` drew, for the CLI to report."""

    out: Path
    samples: int  # samples with both coordinates finite (drawn)
    left_out: int  # samples with a null or non-finite coordinate
    mode: str  # "scatter" or "density"
    x: str
    y: str
    color: str
    quadrant_counts: dict[str, int] = field(default_factory=dict)
    highlighted: int = 0


def draw_map(scores: pl.LazyFrame, prov: dict, out: Path, *, x: str = "difficulty", y: str = "memorization",
             color: str = "quadrant", highlight: list[int] | None = None, scatter_max: int = SCATTER_MAX,
             bins: int = BINS, title: str | None = None) -> MapFacts:
    """Draw the map of `scores` (a scores file, lazily read, with its provenance `prov`) to `out`."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise OptionError(f"--out {out}: the format follows the extension, one of {', '.join(FORMATS)}")
    if scatter_max < 0 or bins < 2:
        raise OptionError("--scatter-max must be >= 0 and the bins >= 2")
    columns = scores.collect_schema()
    for option, name in (("--x", x), ("--y", y)):
        _require_numeric(columns, option, name)
    if color not in ("quadrant", "correctness"):
        _require_numeric(columns, "--color", color)
    figure_cls, canvas_cls, log_norm = _matplotlib()

    finite = pl.col(x).cast(pl.Float64).is_finite() & pl.col(y).cast(pl.Float64).is_finite()
    totals = scores.select(pl.len().alias("all"), finite.sum().alias("drawn")).collect().row(0, named=True)
    counts = dict(scores.group_by(pl.col("quadrant").fill_null(q.UNPLACED)).len().collect().iter_rows())
    drawn = scores.filter(finite).with_columns(pl.col(x).cast(pl.Float64).alias("_x"),
                                               pl.col(y).cast(pl.Float64).alias("_y"))
    n = int(totals["drawn"])
    facts = MapFacts(out, n, int(totals["all"]) - n, "scatter" if n <= scatter_max else "density", x, y, color,
                     {k: int(counts.get(k, 0)) for k in (*q.QUADRANTS, q.UNPLACED)})

    fig = figure_cls(figsize=(8.5, 8))
    grid = fig.add_gridspec(2, 2, width_ratios=(5, 1), height_ratios=(1, 5), wspace=0.04, hspace=0.04)
    ax = fig.add_subplot(grid[1, 0])
    top, right = fig.add_subplot(grid[0, 0], sharex=ax), fig.add_subplot(grid[1, 1], sharey=ax)
    lo_hi = drawn.select(pl.col("_x").min().alias("x0"), pl.col("_x").max().alias("x1"),
                         pl.col("_y").min().alias("y0"), pl.col("_y").max().alias("y1")).collect().row(0, named=True)
    x_edges, y_edges = (_edges(lo_hi["x0"], lo_hi["x1"], bins), _edges(lo_hi["y0"], lo_hi["y1"], bins))
    if n:
        if facts.mode == "scatter":
            _scatter(fig, grid, ax, drawn, color)
        else:
            grid_counts = _binned(drawn, x_edges, y_edges)
            mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_equal(grid_counts.T, 0), cmap="viridis",
                                 norm=log_norm(vmin=1, vmax=max(1, int(grid_counts.max()))))
            fig.colorbar(mesh, cax=_corner(fig, grid), label="samples per bin")
        for axis, column, edges, orient in ((top, "_x", x_edges, "vertical"), (right, "_y", y_edges, "horizontal")):
            hist = _histogram(drawn, column, edges)
            axis.stairs(hist, edges, orientation=orient, fill=True, color="#777777")
    if highlight:
        ids = pl.DataFrame({"sample_id": highlight}).cast({"sample_id": columns["sample_id"]})
        marked = drawn.join(ids.lazy(), on="sample_id", how="semi").select("_x", "_y").collect()
        ax.scatter(marked["_x"], marked["_y"], s=40, facecolors="none", edgecolors="black", linewidths=1.2,
                   label=f"highlighted ({marked.height:,})", zorder=5)
        facts.highlighted = marked.height
    _thresholds(ax, prov, x, y, facts.quadrant_counts)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    top.tick_params(labelbottom=False)
    right.tick_params(labelleft=False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center right", fontsize=8, framealpha=0.8)
    memorization = prov.get("memorization", "")
    fig.suptitle(title or f"carto data map: {n:,} samples ({facts.mode})", x=0.45)
    if y == "memorization" or x == "memorization":
        fig.text(0.45, 0.935, f"memorization = {memorization}", ha="center", fontsize=7, wrap=True)
    canvas_cls(fig)
    write_atomic(out, lambda tmp: _save(fig, tmp, fmt))
    return facts


def _save(fig, path: Path, fmt: str) -> None:
    from matplotlib import rc_context

    with rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, selectable
        fig.savefig(path, format=fmt, dpi=120, bbox_inches="tight")


def _require_numeric(columns: pl.Schema, option: str, name: str) -> None:
    numeric = [c for c, dtype in columns.items() if dtype.is_numeric() and c != "sample_id"]
    if name not in columns or not columns[name].is_numeric():
        raise OptionError(f"{option} {name}: not a numeric column of the scores file; "
                          f"choose one of {', '.join(numeric)}")


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("carto map needs Matplotlib: pip install 'carto-cli[plot]'") from None
    return Figure, FigureCanvasAgg, LogNorm


def _edges(lo: float | None, hi: float | None, bins: int) -> np.ndarray:
    if lo is None or hi is None:
        return np.linspace(0.0, 1.0, bins + 1)
    if hi <= lo:  # one value: a unit-wide window around it
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _bin(column: str, edges: np.ndarray) -> pl.Expr:
    """The bin index of each value (the last edge falls in the last bin)."""
    lo, width, last = float(edges[0]), float(edges[1] - edges[0]), len(edges) - 2
    return ((pl.col(column) - lo) / width).floor().cast(pl.Int64).clip(0, last)


def _binned(drawn: pl.LazyFrame, x_edges: np.ndarray, y_edges: np.ndarray) -> np.ndarray:
    """(bins_x, bins_y) counts, aggregated by Polars without collecting the samples."""
    cells = (drawn.select(_bin("_x", x_edges).alias("bx"), _bin("_y", y_edges).alias("by"))
             .group_by("bx", "by").len().collect())
    grid = np.zeros((len(x_edges) - 1, len(y_edges) - 1), dtype=np.int64)
    grid[cells["bx"].to_numpy(), cells["by"].to_numpy()] = cells["len"].to_numpy()
    return grid


def _histogram(drawn: pl.LazyFrame, column: str, edges: np.ndarray) -> np.ndarray:
    cells = drawn.select(_bin(column, edges).alias("b")).group_by("b").len().collect()
    hist = np.zeros(len(edges) - 1, dtype=np.int64)
    hist[cells["b"].to_numpy()] = cells["len"].to_numpy()
    return hist


def _corner(fig, grid):
    """The empty top-right cell, for a colour bar."""
    cell = fig.add_subplot(grid[0, 1])
    cell.axis("off")
    return cell.inset_axes([0.1, 0.05, 0.15, 0.9])


def _scatter(fig, grid, ax, drawn: pl.LazyFrame, color: str) -> None:
    size = 6
    if color == "quadrant":
        points = drawn.select("_x", "_y", pl.col("quadrant").fill_null(q.UNPLACED)).collect()
        for name in (*q.QUADRANTS, q.UNPLACED):
            part = points.filter(pl.col("quadrant") == name)
            if part.height:
                ax.scatter(part["_x"], part["_y"], s=size, color=_COLOURS[name], alpha=0.6, linewidths=0,
                           label=f"{name} ({part.height:,})")
        return
    value = (pl.col("n_correct") / pl.col("n_seen")) if color == "correctness" else pl.col(color)
    points = drawn.select("_x", "_y", value.cast(pl.Float64).alias("_c")).collect()
    dots = ax.scatter(points["_x"], points["_y"], s=size, c=points["_c"], cmap="viridis", alpha=0.7, linewidths=0)
    fig.colorbar(dots, cax=_corner(fig, grid), label=color)


def _thresholds(ax, prov: dict, x: str, y: str, counts: dict[str, int]) -> None:
    """The thresholds the scores were placed by, and each quadrant's count in its corner, when the
    map is difficulty against memorization."""
    if (x, y) != ("difficulty", "memorization"):
        return
    cut = prov.get("thresholds") or {}
    d, m = cut.get("difficulty"), cut.get("memorization")
    if d is not None and math.isfinite(d):
        ax.axvline(d, color="black", linewidth=0.8, linestyle="--")
    if m is not None and math.isfinite(m):
        ax.axhline(m, color="black", linewidth=0.8, linestyle="--")
    for name, (px, py, ha, va) in _CORNERS.items():
        ax.text(px, py, f"{name}\n{counts.get(name, 0):,}", transform=ax.transAxes, ha=ha, va=va, fontsize=9,
                color=_COLOURS[name], fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 2})
