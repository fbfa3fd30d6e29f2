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

Real scores are zero-heavy: most samples have memorization exactly 0 (no memorized run, or, on
scores with findings, no private finding), and drawn on one axis they are a line under the
threshold. So where at least `ZERO_SHARE` of the samples have a y value of exactly 0 (and none
below it), those samples get a strip of their own under the map (jittered vertically by a fixed,
sample-independent sequence: the strip's height means nothing), and their count a bar of its own
(`ZERO_COLOUR`) in the marginal. The marginals count on a log scale, so a tail of a few samples
shows beside thousands. A threshold is drawn as a dashed line only where it separates drawn
values; a memorization threshold of 0 is the line between the strip and the map, and the legend
says what it means (on scores with findings: carries a private finding). The legend sits under
the map, outside every panel, so it covers no data; it names each quadrant, its count and its
region. Only the y axis gets a strip (a zero-heavy column on the x axis is drawn as it is).

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

from carto_cli.errors import ChoiceError, MissingDependencyError, OptionError
from carto_cli.log.durable import write_atomic
from carto_cli.score import quadrants as q

FORMATS = ("png", "svg", "pdf")
SCATTER_MAX = 20_000
BINS = 160
ZERO_SHARE = 0.05  # y values exactly 0 get their own strip from this share of the drawn samples on
# Quadrant colours (colour-blind safe, Okabe-Ito); the marginals' grey; the zero-mass bar's colour,
# used by nothing else in the figure (tests find the bar by it).
_COLOURS = {q.STABLE_EASY: "#0072B2", q.AMBIGUOUS_HARD: "#E69F00", q.HOTSPOT: "#D55E00",
            q.NOISY_OUTLIER: "#CC79A7", q.UNPLACED: "#999999"}
MARGINAL_COLOUR = "#777777"
ZERO_COLOUR = "#332288"
_GOLDEN = 0.6180339887498949  # the strip's jitter: i * golden mod 1, evenly spread, no random state
_BASELINE = 0.5  # marginal bars start here on their log axis: a count of 1 still shows


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
    zeros: int = 0  # samples drawn in the strip of y = 0 (0: no strip)


@dataclass
class _Panels:
    """The axes of one map: the map itself, its marginals, and the strip of y = 0 (None without)."""

    ax: object
    top: object
    right: object
    zero: object | None
    zero_right: object | None
    grid: object


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

    fx, fy = pl.col(x).cast(pl.Float64), pl.col(y).cast(pl.Float64)
    finite = fx.is_finite() & fy.is_finite()
    totals = scores.select(pl.len().alias("all"), finite.sum().alias("drawn"),
                           (finite & (fy == 0)).sum().alias("zeros"),
                           fy.filter(finite).min().alias("y_min")).collect().row(0, named=True)
    counts = dict(scores.group_by(pl.col("quadrant").fill_null(q.UNPLACED)).len().collect().iter_rows())
    drawn = scores.filter(finite).with_columns(fx.alias("_x"), fy.alias("_y"))
    n = int(totals["drawn"])
    strip = totals["zeros"] > 0 and totals["zeros"] >= ZERO_SHARE * n and totals["y_min"] >= 0
    facts = MapFacts(out, n, int(totals["all"]) - n, "scatter" if n <= scatter_max else "density", x, y, color,
                     {k: int(counts.get(k, 0)) for k in (*q.QUADRANTS, q.UNPLACED)},
                     zeros=int(totals["zeros"]) if strip else 0)

    fig = figure_cls(figsize=(8.5, 8.8 if strip else 8))
    panels = _panels(fig, strip)
    above = drawn.filter(pl.col("_y") != 0) if strip else drawn
    zeros = (drawn.filter(pl.col("_y") == 0).with_row_index("_i")
             .with_columns(((pl.col("_i") * _GOLDEN) % 1.0 * 0.8 - 0.4).alias("_j"))) if strip else None
    lo_hi = _extent(drawn, above)
    # with a strip, the map's y axis starts at 0 all the same: the gap up to the smallest value is data too
    y0 = 0.0 if strip and lo_hi["y1"] is not None else lo_hi["y0"]
    x_edges, y_edges = _edges(lo_hi["x0"], lo_hi["x1"], bins), _edges(y0, lo_hi["y1"], bins)
    if n:
        _draw_points(fig, panels, above, zeros, color, facts.mode, x_edges, y_edges, log_norm)
        _marginals(panels, drawn, above, x_edges, y_edges, facts.zeros, n)
    handles = []
    if highlight:
        facts.highlighted = _highlight(panels, drawn, zeros, highlight, columns["sample_id"], handles)
    handles = _thresholds(panels, prov, x, y, lo_hi, strip) + handles
    _label(panels, x, y, strip)
    canvas_cls(fig)
    _legend(fig, panels, _quadrant_handles(prov, x, y, color, facts) + handles)
    fig.suptitle(title or f"carto data map: {n:,} samples ({facts.mode})", x=0.45)
    if y == "memorization" or x == "memorization":
        fig.text(0.45, 0.935, f"memorization = {memorization_meaning(prov)}", ha="center", fontsize=7, wrap=True)
    write_atomic(out, lambda tmp: _save(fig, tmp, fmt))
    return facts


def _save(fig, path: Path, fmt: str) -> None:
    from matplotlib import rc_context

    with rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, selectable
        fig.savefig(path, format=fmt, dpi=120, bbox_inches="tight")


def _require_numeric(columns: pl.Schema, option: str, name: str) -> None:
    numeric = [c for c, dtype in columns.items() if dtype.is_numeric() and c != "sample_id"]
    if name not in columns or not columns[name].is_numeric():
        raise ChoiceError(f"{option} {name}: not a numeric column of the scores file; "
                          f"choose one of {', '.join(numeric)}")


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("carto map needs Matplotlib: pip install 'carto-cli[plot]'") from None
    return Figure, FigureCanvasAgg, LogNorm


def _panels(fig, strip: bool) -> _Panels:
    """The grid: the x marginal on top, the map with the y marginal at its right, and under them
    the strip of y = 0 with its count's bar (when `strip`)."""
    heights = (1, 5, 0.8) if strip else (1, 5)
    grid = fig.add_gridspec(len(heights), 2, width_ratios=(5, 1), height_ratios=heights, wspace=0.04, hspace=0.04)
    ax = fig.add_subplot(grid[1, 0])
    top, right = fig.add_subplot(grid[0, 0], sharex=ax), fig.add_subplot(grid[1, 1], sharey=ax)
    zero = fig.add_subplot(grid[2, 0], sharex=ax) if strip else None
    zero_right = fig.add_subplot(grid[2, 1], sharex=right) if strip else None
    for axes, label in ((ax, "map"), (top, "x marginal"), (right, "y marginal"), (zero, "zero strip"),
                        (zero_right, "zero bar")):
        if axes is not None:
            axes.set_label(label)  # each panel's role, for a reader of the figure (the tests)
    return _Panels(ax, top, right, zero, zero_right, grid)


def _extent(drawn: pl.LazyFrame, above: pl.LazyFrame) -> dict:
    """x over every drawn sample, y over those drawn in the map (not the strip)."""
    xs = drawn.select(pl.col("_x").min().alias("x0"), pl.col("_x").max().alias("x1")).collect().row(0, named=True)
    ys = above.select(pl.col("_y").min().alias("y0"), pl.col("_y").max().alias("y1")).collect().row(0, named=True)
    return {**xs, **ys}


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
    return cell.inset_axes([0.1, 0.15, 0.15, 0.8])


def _draw_points(fig, panels: _Panels, above: pl.LazyFrame, zeros: pl.LazyFrame | None, color: str, mode: str,
                 x_edges: np.ndarray, y_edges: np.ndarray, log_norm) -> None:
    """The samples: points (scatter) or counts per bin (density), in the map and in the strip."""
    if mode == "density":
        grid_counts = _binned(above, x_edges, y_edges)
        strip_counts = _binned(zeros, x_edges, np.array([-0.5, 0.5])) if zeros is not None else np.zeros((1, 1))
        norm = log_norm(vmin=1, vmax=max(1, int(grid_counts.max()), int(strip_counts.max())))
        mesh = panels.ax.pcolormesh(x_edges, y_edges, np.ma.masked_equal(grid_counts.T, 0), cmap="viridis", norm=norm)
        if zeros is not None:
            panels.zero.pcolormesh(x_edges, [-0.5, 0.5], np.ma.masked_equal(strip_counts.T, 0), cmap="viridis",
                                   norm=norm)
        fig.colorbar(mesh, cax=_corner(fig, panels.grid), label="samples per bin")
        return
    norm = None
    if color != "quadrant":
        value = (pl.col("n_correct") / pl.col("n_seen")) if color == "correctness" else pl.col(color)
        above = above.with_columns(value.cast(pl.Float64).alias("_c"))
        zeros = zeros.with_columns(value.cast(pl.Float64).alias("_c")) if zeros is not None else None
        both = pl.concat([f.select("_c") for f in (above, zeros) if f is not None])
        lo, hi = both.select(pl.col("_c").min().alias("lo"), pl.col("_c").max().alias("hi")).collect().row(0)
        from matplotlib.colors import Normalize

        norm = Normalize(vmin=lo, vmax=hi)
    dots = _scatter(panels.ax, above, "_y", color, norm)
    if zeros is not None:
        _scatter(panels.zero, zeros, "_j", color, norm)
    if dots is not None:
        fig.colorbar(dots, cax=_corner(fig, panels.grid), label=color)


def _scatter(ax, frame: pl.LazyFrame, y: str, color: str, norm):
    """One point per sample of `frame` at (_x, `y`); the colour mappable when coloured by a value."""
    size = 6
    if color == "quadrant":
        points = frame.select("_x", y, pl.col("quadrant").fill_null(q.UNPLACED)).collect()
        for name in (*q.QUADRANTS, q.UNPLACED):
            part = points.filter(pl.col("quadrant") == name)
            if part.height:
                ax.scatter(part["_x"], part[y], s=size, color=_COLOURS[name], alpha=0.6, linewidths=0)
        return None
    points = frame.select("_x", y, "_c").collect()
    return ax.scatter(points["_x"], points[y], s=size, c=points["_c"], cmap="viridis", norm=norm, alpha=0.7,
                      linewidths=0)


def _marginals(panels: _Panels, drawn: pl.LazyFrame, above: pl.LazyFrame, x_edges: np.ndarray,
               y_edges: np.ndarray, zeros: int, n: int) -> None:
    """Counts per bin on a log scale: x over every sample on top, y of the map at its right, and
    the samples at y = 0 as one bar of their own, labelled with their count and share."""
    top_counts = _histogram(drawn, "_x", x_edges)
    panels.top.stairs(np.maximum(top_counts, _BASELINE), x_edges, baseline=_BASELINE, fill=True,
                      color=MARGINAL_COLOUR)
    panels.top.set_yscale("log")
    right_counts = _histogram(above, "_y", y_edges)
    panels.right.stairs(np.maximum(right_counts, _BASELINE), y_edges, baseline=_BASELINE, orientation="horizontal",
                        fill=True, color=MARGINAL_COLOUR)
    panels.right.set_xscale("log")
    most = max(1, int(top_counts.max()), int(right_counts.max()), zeros)
    panels.top.set_ylim(_BASELINE, most * 1.5)
    panels.right.set_xlim(_BASELINE, most * 1.5)
    panels.top.set_ylabel("samples (log)", fontsize=8)
    if panels.zero_right is None:
        panels.right.set_xlabel("samples (log)", fontsize=8)
        return
    panels.zero_right.barh([0], [zeros - _BASELINE], left=_BASELINE, height=0.8, color=ZERO_COLOUR)
    panels.zero_right.set_ylim(-0.5, 0.5)
    panels.zero_right.set_yticks([])
    panels.zero_right.set_xlabel("samples (log)", fontsize=8)
    panels.zero_right.yaxis.set_label_position("right")
    panels.zero_right.set_ylabel(f"{zeros:,} at 0\n({100 * zeros / n:.0f}%)", rotation=0, ha="left", va="center",
                                 fontsize=8, color=ZERO_COLOUR)
    panels.right.tick_params(labelbottom=False)


def _highlight(panels: _Panels, drawn: pl.LazyFrame, zeros: pl.LazyFrame | None, ids: list[int], id_dtype,
               handles: list) -> int:
    """Ring the `ids` found (in the map, or in the strip at their jittered place); how many."""
    wanted = pl.DataFrame({"sample_id": ids}).cast({"sample_id": id_dtype}).lazy()
    ring = {"s": 40, "facecolors": "none", "edgecolors": "black", "linewidths": 1.2, "zorder": 5}
    above = drawn.filter(pl.col("_y") != 0) if zeros is not None else drawn
    marked = above.join(wanted, on="sample_id", how="semi").select("_x", "_y").collect()
    dots = panels.ax.scatter(marked["_x"], marked["_y"], **ring)
    found = marked.height
    if zeros is not None:
        low = zeros.join(wanted, on="sample_id", how="semi").select("_x", "_j").collect()
        panels.zero.scatter(low["_x"], low["_j"], **ring)
        found += low.height
    handles.append((dots, f"highlighted ({found:,})"))
    return found


def _thresholds(panels: _Panels, prov: dict, x: str, y: str, lo_hi: dict, strip: bool) -> list:
    """The thresholds the scores were placed by (difficulty against memorization only), as dashed
    lines where they separate drawn values. A memorization threshold below every value of the map
    but not below 0 is the line between the strip and the map: no line is drawn on the 0 row."""
    if (x, y) != ("difficulty", "memorization"):
        return []
    cut = prov.get("thresholds") or {}
    d, m = cut.get("difficulty"), cut.get("memorization")
    style = {"color": "black", "linewidth": 0.8, "linestyle": "--"}
    drawn = {}
    if d is not None and math.isfinite(d):
        drawn["difficulty"] = panels.ax.axvline(d, **style)
        if panels.zero is not None:
            panels.zero.axvline(d, **style)
    on_boundary = strip and m is not None and 0 <= m < (lo_hi["y0"] if lo_hi["y0"] is not None else math.inf)
    if m is not None and math.isfinite(m) and not on_boundary and not (strip and m < 0):
        drawn["memorization"] = panels.ax.axhline(m, **style)
    if not drawn:
        return []
    return [(next(iter(drawn.values())), "thresholds" if len(drawn) == 2 else f"{next(iter(drawn))} threshold")]


def _regions(prov: dict) -> dict[str, str]:
    """Each quadrant's region in words, from the thresholds the scores were placed by."""
    cut = prov.get("thresholds") or {}

    def side(column: str, high: bool) -> str:
        value = cut.get(column)
        if value is None or not math.isfinite(value):
            return f"{'high' if high else 'low'} {column}"
        if column == "memorization" and value == 0:
            if prov.get("findings"):
                return "carries a private finding" if high else "no private finding"
            return "memorization > 0" if high else "memorization 0"
        return f"{column} {'>' if high else '≤'} {value:.4g}"

    return {q.STABLE_EASY: f"{side('difficulty', False)}, {side('memorization', False)}",
            q.AMBIGUOUS_HARD: f"{side('difficulty', True)}, {side('memorization', False)}",
            q.HOTSPOT: f"{side('difficulty', False)}, {side('memorization', True)}",
            q.NOISY_OUTLIER: f"{side('difficulty', True)}, {side('memorization', True)}",
            q.UNPLACED: "no early presentation or no memorization"}


def _quadrant_handles(prov: dict, x: str, y: str, color: str, facts: MapFacts) -> list:
    """Legend entries: each quadrant with samples, its count (and its region on the default map);
    a coloured dot where the points are coloured by quadrant."""
    from matplotlib.lines import Line2D

    regions = _regions(prov) if (x, y) == ("difficulty", "memorization") else {}
    if color != "quadrant" and not regions:
        return []
    entries = []
    for name in (*q.QUADRANTS, q.UNPLACED):
        count = facts.quadrant_counts.get(name, 0)
        if not count:
            continue
        marker = {"marker": "o", "markersize": 5, "color": _COLOURS[name]} if color == "quadrant" and \
            facts.mode == "scatter" else {"marker": None}
        label = f"{name} ({count:,})" + (f": {regions[name]}" if name in regions else "")
        entries.append((Line2D([], [], linestyle="none", **marker), label))
    return entries


def _legend(fig, panels: _Panels, entries: list) -> None:
    """The legend under the lowest panel and its axis label: outside every panel, covering nothing."""
    if not entries:
        return
    bottom = panels.zero if panels.zero is not None else panels.ax
    box = bottom.get_tightbbox(fig.canvas.get_renderer()).transformed(fig.transFigure.inverted())
    main = panels.ax.get_position()
    fig.legend([h for h, _ in entries], [label for _, label in entries], loc="upper center", ncol=2, fontsize=8,
               frameon=False, handlelength=1.0, bbox_to_anchor=((main.x0 + main.x1) / 2, box.y0 - 0.005),
               bbox_transform=fig.transFigure)


def _label(panels: _Panels, x: str, y: str, strip: bool) -> None:
    lowest = panels.zero if strip else panels.ax
    lowest.set_xlabel(x)
    panels.ax.set_ylabel(y)
    panels.top.tick_params(labelbottom=False)
    panels.right.tick_params(labelleft=False)
    if strip:
        from matplotlib.ticker import FuncFormatter

        # the map's axis starts at 0 (the gap up to its smallest value shows); its 0 is the strip's
        panels.ax.set_ylim(bottom=0)
        panels.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: "" if value == 0 else f"{value:g}"))
        panels.ax.tick_params(labelbottom=False)
        panels.zero.set_ylim(-0.5, 0.5)
        panels.zero.set_yticks([0], ["0"])
        panels.zero_right.tick_params(labelleft=False)


def memorization_meaning(prov: dict) -> str:
    """What a scores file's memorization column holds, in words (its provenance; on scores placed
    by findings, the finding's evidence, whatever signal found them)."""
    signal = prov.get("memorization", "")
    if prov.get("findings"):
        return ("the evidence (nats) of the strongest private finding a sample carries, 0 without one; the "
                f"findings' own signal: {signal}")
    return signal
