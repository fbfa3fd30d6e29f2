"""`carto map`: the data map of a scores file, as PNG, SVG or PDF, and its bad input."""

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
        (["--x", "nope"], "--x nope: not a numeric column of the scores file; choose one of difficulty,"),
        (["--y", "quadrant"], "--y quadrant: not a numeric column of the scores file"),
        (["--color", "ever_learned"], "--color ever_learned: not a numeric column of the scores file"),
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


def test_missing_scores_and_missing_matplotlib(scores: Path, tmp_path: Path, monkeypatch) -> None:
    result = runner.invoke(app, ["map", "--scores", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 1 and "none.parquet: no such file; run `carto score LOGS` first" in result.output
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if Matplotlib were not installed
    result = runner.invoke(app, ["map", "--scores", str(scores), "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 1
    assert "carto map needs Matplotlib: pip install 'carto-cli[plot]'" in result.output
