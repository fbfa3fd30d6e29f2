"""`carto map`: the data map of a scores file, as PNG, SVG or PDF, and its bad input.

The pictures are checked as a person would look at them: the figure `carto map` saved is drawn
to pixels, and what shows is measured there (a bar's pixels, a bin's row) or from the artists'
places on the page (the legend's box against the panels' boxes), on the sample logs' scores and
on real zero-heavy scores (`sample_findings`: 97% of the samples at memorization 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.io import artifacts
from carto_cli.report import maps

pytest.importorskip("matplotlib")

runner = CliRunner()
SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("map") / "scores.parquet"
    result = runner.invoke(app, ["score", str(SAMPLE_LOGS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def carto_map(*args: object) -> dict:
    result = runner.invoke(app, ["map", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_png_map_of_the_sample_logs(scores: Path, tmp_path: Path) -> None:
    import matplotlib.image

    facts = carto_map("--scores", scores, "--out", tmp_path / "map.png")
    image = matplotlib.image.imread(tmp_path / "map.png")
    assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] > 500
    assert facts["mode"] == "scatter" and facts["samples"] == 2025 and facts["left_out"] == 0
    counts = dict(pl.read_parquet(scores).group_by("quadrant").len().iter_rows())
    assert {k: v for k, v in facts["quadrants"].items() if v} == counts


def test_svg_labels_each_quadrant_with_its_count(scores: Path, tmp_path: Path) -> None:
    facts = carto_map("--scores", scores, "--out", tmp_path / "map.svg")
    svg = (tmp_path / "map.svg").read_text()
    assert svg.lstrip().startswith("<?xml")
    for name in ("stable-easy", "ambiguous-hard", "hotspot-memorized", "noisy-outlier"):
        assert f"{facts['quadrants'][name]:,}" in svg and name in svg
    assert "memorization = largest early loss" in svg  # what the y axis holds, from the provenance


def test_pdf_density_and_other_coordinates(scores: Path, tmp_path: Path) -> None:
    facts = carto_map("--scores", scores, "--out", tmp_path / "map.pdf", "--scatter-max", 100)
    assert facts["mode"] == "density"
    assert (tmp_path / "map.pdf").read_bytes().startswith(b"%PDF")
    facts = carto_map("--scores", scores, "--out", tmp_path / "c.png", "--x", "mean_loss", "--y", "n_correct",
                      "--color", "correctness")
    assert (facts["x"], facts["y"], facts["color"]) == ("mean_loss", "n_correct", "correctness")
    carto_map("--scores", scores, "--out", tmp_path / "f.png", "--color", "forget_events")


def test_the_classic_dataset_cartography_map(scores: Path, tmp_path: Path) -> None:
    # Swayamdipta et al.'s map: variability across, confidence up, coloured by correctness, from
    # the coordinates every scores file carries
    facts = carto_map("--scores", scores, "--out", tmp_path / "classic.png", "--x", "variability",
                      "--y", "confidence", "--color", "correctness")
    assert (facts["x"], facts["y"], facts["mode"], facts["samples"]) == ("variability", "confidence", "scatter", 2025)
    frame = pl.read_parquet(scores)
    assert frame["confidence"].is_between(0, 1).all() and (frame["variability"] >= 0).all()
    assert frame["correctness"].equals((frame["n_correct"] / frame["n_seen"]).alias("correctness"))


def test_highlight_rings_the_ids_it_finds(scores: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# carriers\n1\n2\n\n5\n999999\n")
    facts = carto_map("--scores", scores, "--out", tmp_path / "h.png", "--highlight", ids)
    assert facts["highlighted"] == 3
    result = runner.invoke(app, ["map", "--scores", str(scores), "--out", str(tmp_path / "h.png"),
                                 "--highlight", str(ids)])
    assert "3 of 4 highlighted ids found" in result.output


def captured(monkeypatch, *args: object):
    """`carto map ARGS` through the CLI, the Matplotlib figure it saved, and that figure drawn to
    pixels (RGB in [0, 1], row 0 at the top)."""
    figures = []
    real = maps._save
    monkeypatch.setattr(maps, "_save", lambda fig, path, fmt: (figures.append(fig), real(fig, path, fmt)))
    facts = carto_map(*args)
    fig = figures[-1]
    fig.canvas.draw()
    return fig, facts, np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255


def panel(fig, label: str):
    found = [a for a in fig.axes if a.get_label() == label]
    assert found, f"no panel {label!r}: {[a.get_label() for a in fig.axes]}"
    return found[0]


def crop(pixels: np.ndarray, box, inset: int = 2) -> np.ndarray:
    """The pixels inside a display box (origin bottom left), without `inset` pixels of its frame."""
    height = pixels.shape[0]
    return pixels[int(height - box.y1) + inset:int(height - box.y0) - inset, int(box.x0) + inset:int(box.x1) - inset]


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255


def is_colour(pixels: np.ndarray, colour: str) -> np.ndarray:
    return np.abs(pixels - rgb(colour)).max(axis=-1) < 0.03


def test_zero_heavy_scores_show_the_zero_mass_and_the_tail(sample_findings, tmp_path: Path, monkeypatch) -> None:
    frame = pl.read_parquet(sample_findings["scores"])
    zeros = int((frame["memorization"] == 0).sum())
    assert zeros / frame.height > 0.9  # zero-heavy, as real scores are
    fig, facts, pixels = captured(monkeypatch, "--scores", sample_findings["scores"], "--out", tmp_path / "m.png")
    assert facts["zeros"] == zeros
    # the zero mass: a bar of its own colour, across most of its panel
    bar = is_colour(crop(pixels, panel(fig, "zero bar").get_window_extent()), maps.ZERO_COLOUR)
    assert bar.any(axis=0).mean() > 0.8 and bar.any(axis=1).mean() > 0.5
    # the tail: the highest memorization, held by under 1% as many samples as 0, shows as a bar at
    # least 3 pixels long in the y marginal, on the row of its bin
    top = frame["memorization"].max()
    assert (frame["memorization"] > top * (1 - 1 / maps.BINS)).sum() < zeros / 100
    right = panel(fig, "y marginal")
    (_, lo), (_, hi) = right.transData.transform([(1, top * (1 - 1 / maps.BINS)), (1, top)])
    box = right.get_window_extent()
    rows = pixels[round(pixels.shape[0] - hi):round(pixels.shape[0] - lo) + 1, int(box.x0) + 2:int(box.x1) - 2]
    assert is_colour(rows, maps.MARGINAL_COLOUR).sum(axis=1).max() >= 3
    # every sample at 0 is a point of the strip, none of the map
    strip = panel(fig, "zero strip")
    assert sum(len(c.get_offsets()) for c in strip.collections) == zeros
    assert sum(len(c.get_offsets()) for c in panel(fig, "map").collections) == frame.height - zeros


@pytest.mark.parametrize("which", ["sample logs", "zero-heavy"])
def test_no_legend_or_label_covers_data(scores: Path, sample_findings, tmp_path: Path, monkeypatch,
                                        which: str) -> None:
    path = scores if which == "sample logs" else sample_findings["scores"]
    fig, _, _ = captured(monkeypatch, "--scores", path, "--out", tmp_path / "m.png", "--highlight",
                         write_ids(tmp_path, [1, 2, 5]))
    legends = [*fig.legends, *(a.get_legend() for a in fig.axes if a.get_legend() is not None)]
    assert legends
    data = [a for a in fig.axes if a.collections or a.patches or a.lines]
    for legend in legends:
        assert all(not legend.get_window_extent().overlaps(a.get_window_extent()) for a in data)
    for axes in data:
        points = [axes.transData.transform(c.get_offsets()) for c in axes.collections if len(c.get_offsets())]
        points = np.concatenate(points) if points else np.zeros((0, 2))
        for text in axes.texts:
            box = text.get_window_extent()
            assert not ((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0)
                        & (points[:, 1] <= box.y1)).any(), text.get_text()


def write_ids(tmp_path: Path, ids: list[int]) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def test_a_memorization_threshold_of_zero_is_no_line_on_the_zero_row(sample_findings, tmp_path: Path,
                                                                     monkeypatch) -> None:
    prov = artifacts.read_provenance(sample_findings["scores"])
    assert prov["thresholds"]["memorization"] == 0 and prov["findings"]
    fig, _, _ = captured(monkeypatch, "--scores", sample_findings["scores"], "--out", tmp_path / "m.svg")
    flat = [line for a in fig.axes for line in a.lines if len(set(line.get_ydata())) == 1]
    assert not any(line.get_ydata()[0] == 0 for line in flat)  # the strip's edge is the threshold
    difficulty = prov["thresholds"]["difficulty"]
    assert [line.get_xdata()[0] for a in fig.axes for line in a.lines if len(set(line.get_xdata())) == 1] == [
        difficulty, difficulty]  # in the map and in the strip
    svg = (tmp_path / "m.svg").read_text()
    assert "carries a private finding" in svg and "no private finding" in svg


def test_a_threshold_above_zero_is_drawn_and_the_zeros_get_a_strip(scores: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    frame = pl.read_parquet(scores)
    zeros = int((frame["memorization"] == 0).sum())
    m = artifacts.read_provenance(scores)["thresholds"]["memorization"]
    assert 0 < m and zeros / frame.height > maps.ZERO_SHARE
    fig, facts, _ = captured(monkeypatch, "--scores", scores, "--out", tmp_path / "m.png")
    assert facts["zeros"] == zeros
    assert [line.get_ydata()[0] for line in panel(fig, "map").lines if len(set(line.get_ydata())) == 1] == [m]
    assert panel(fig, "map").get_ylim()[0] <= 0  # the map's axis starts at 0: the gap above the strip shows
    # a density counts the zeros in the strip too
    fig, facts, _ = captured(monkeypatch, "--scores", scores, "--out", tmp_path / "d.png", "--scatter-max", 100)
    assert facts["mode"] == "density"
    assert panel(fig, "zero strip").collections[0].get_array().sum() == zeros
    assert panel(fig, "map").collections[0].get_array().sum() == frame.height - zeros


def test_binned_density_counts_every_sample_in_its_bin() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50_000), rng.exponential(size=50_000)
    frame = pl.LazyFrame({"_x": x, "_y": y})
    x_edges, y_edges = maps._edges(x.min(), x.max(), 40), maps._edges(y.min(), y.max(), 30)
    grid = maps._binned(frame, x_edges, y_edges)
    want, _, _ = np.histogram2d(x, y, bins=[x_edges, y_edges])
    assert grid.sum() == 50_000 and np.array_equal(grid, want.astype(np.int64))


def test_left_out_samples_are_counted(tmp_path: Path) -> None:
    frame = pl.DataFrame({"sample_id": [1, 2, 3], "difficulty": [1.0, None, 2.0], "memorization": [0.5, 0.1, None],
                          "forget_events": [0, 0, 0], "n_seen": [2, 2, 2], "n_correct": [1, 1, 1],
                          "quadrant": ["stable-easy", None, None]})
    path = tmp_path / "s.parquet"
    prov = artifacts.provenance("scores", inputs=[], parameters={}, thresholds={"difficulty": 1.5,
                                                                                "memorization": 0.3})
    artifacts.write(frame, path, prov)
    facts = carto_map("--scores", path, "--out", tmp_path / "m.png")
    assert (facts["samples"], facts["left_out"], facts["quadrants"]["unplaced"]) == (1, 2, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/m.jpg"], "--out {tmp}/m.jpg: the format follows the extension, one of png, svg, pdf"),
        (["--highlight", "{tmp}/none.txt"], "{tmp}/none.txt: no such file; pass --highlight a text file"),
        (["--highlight", "{tmp}/bad.txt"], "{tmp}/bad.txt, line 2: 'x7' is not a sample id; --highlight takes one"),
    ],
)
def test_bad_input_is_one_line(scores: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.txt").write_text("3\nx7\n")
    argv = ["map", "--scores", str(scores), "--out", str(tmp_path / "m.png"),
            *[a.format(tmp=tmp_path) for a in args]]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: " + message.format(tmp=tmp_path)), result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--x", "nope"], "--x nope: not a numeric column of the scores file; choose one of difficulty,"),
        (["--y", "quadrant"], "--y quadrant: not a numeric column of the scores file"),
        (["--color", "ever_learned"], "--color ever_learned: not a numeric column of the scores file"),
    ],
)
def test_a_column_that_is_not_a_choice_is_a_usage_error(scores: Path, tmp_path: Path, args: list[str],
                                                        message: str) -> None:
    result = runner.invoke(app, ["map", "--scores", str(scores), "--out", str(tmp_path / "m.png"), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1].startswith("Error: " + message), result.output
    assert not (tmp_path / "m.png").exists()


def test_missing_scores_and_missing_matplotlib(scores: Path, tmp_path: Path, monkeypatch) -> None:
    result = runner.invoke(app, ["map", "--scores", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 1 and "none.parquet: no such file; run `carto score LOGS` first" in result.output
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if Matplotlib were not installed
    result = runner.invoke(app, ["map", "--scores", str(scores), "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 1
    assert "carto map needs Matplotlib: pip install 'carto-cli[plot]'" in result.output
