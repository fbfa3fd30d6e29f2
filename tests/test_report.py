"""`carto report`: one self-contained HTML page, checked as text and in a real headless browser.

The scores are `carto score` of sample_logs/; the dataset beside them is made up (one text per
sample, each with a `<script>` tag, an ampersand and quotes), so escaping shows. The browser tests
run Debian's chromium (`--headless --dump-dom`, `--screenshot`) through a proxy that this test
listens on (`Listener`): every request the page makes reaches it, so "no request" is measured, and
a planted external image shows that the listener does see one. Chromium's own calls home (sign-in,
search) are pointed at a sentinel host (`--gaia-url`, `--google-base-url`) and not counted; its
network prediction is off in the profile. Without chromium the browser tests are skipped, except
in CI (the `CI` variable set), where .ci/run installs it and a missing browser fails.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.io import artifacts

pytest.importorskip("matplotlib")

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LOGS = ROOT / "sample_logs"
QUADRANTS = ("stable-easy", "ambiguous-hard", "hotspot-memorized", "noisy-outlier")
CHROMIUM = shutil.which("chromium")
OWN = "chromium-self.invalid"  # where chromium's own background calls are sent (not the page's)
browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                             reason="chromium is not installed (.ci/run installs it; CI fails without it)")


def text_of(sample_id: int) -> str:
    return f"<script>document.title='pwned {sample_id}'</script> & \"sample\" {sample_id}\nsecond line"


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """scores.parquet of sample_logs/, train.parquet (texts by row order), and their report."""
    tmp = tmp_path_factory.mktemp("report")
    scores, data, out = tmp / "scores.parquet", tmp / "train.parquet", tmp / "report.html"
    assert run("score", SAMPLE_LOGS, "--out", scores).exit_code == 0
    pl.DataFrame({"text": [text_of(i) for i in range(2025)]}).write_parquet(data)
    result = run("report", "--scores", scores, "--logs", SAMPLE_LOGS, "--data", data, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return {"scores": scores, "data": data, "out": out, "summary": json.loads(result.stdout), "dir": tmp}


def scores_counts(path: Path) -> dict[str, int]:
    return dict(pl.read_parquet(path).group_by("quadrant").len().iter_rows())


class Tables(HTMLParser):
    """Every <table> of a page by its last class: rows of (the tr's data-quadrant, cell texts),
    the texts unescaped as a browser shows them; and every <img> src."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[tuple[str | None, list[str]]]] = {}
        self.images: list[str] = []
        self.tags: list[str] = []
        self._table = self._cell = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self._table = self.tables.setdefault(((attrs.get("class") or "") + " ").split()[-1], [])
        elif tag == "tr" and self._table is not None:
            self._table.append((attrs.get("data-quadrant"), []))
        elif tag in ("td", "th") and self._table is not None and self._table:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1][1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, name: str) -> list[tuple[str | None, list[str]]]:
        return self.tables[name][1:]  # without the header row


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------ the page, as text


def test_quadrant_counts_curves_and_summary(made) -> None:
    page = Tables(made["out"].read_text())
    counts = scores_counts(made["scores"])
    shown = {q: int(number(cells[1])) for q, cells in page.rows("quadrants")}
    assert shown == counts and set(shown) == set(QUADRANTS)
    shares = {q: number(cells[2]) for q, cells in page.rows("quadrants")}
    assert shares == {q: round(100 * n / 2025, 1) for q, n in counts.items()}
    # the learning curves are the table of sample_logs/README.md (measured when the logs were made)
    readme = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \|$", (SAMPLE_LOGS / "README.md").read_text(),
                        re.MULTILINE)
    assert len(readme) == 10
    curves = [(cells[0], cells[4], cells[3]) for _, cells in page.rows("curves")]
    assert curves == readme
    assert all(cells[1] == "2,025" and cells[2] == "2,025" for _, cells in page.rows("curves"))
    summary = made["summary"]
    assert summary["quadrants"] == counts and summary["epochs"] == 10 and summary["texts"] is True
    assert summary["figures"] == ["map", "map-correctness", "distributions", "curves"]
    assert summary["bytes"] == made["out"].stat().st_size


def test_the_page_is_self_contained(made) -> None:
    text = made["out"].read_text()
    page = Tables(text)
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        width, height = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert 500 <= width <= 2000 and 200 <= height <= 2000, (width, height)
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"https?:|//|url\(|@import|<link|<script|<iframe|<object|<embed|srcset", without_images,
                         re.IGNORECASE), re.findall(r".{30}(?:https?:|//|url\(|<script).{30}", without_images)
    assert ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            "style-src 'unsafe-inline'\">") in text
    assert set(page.tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "span",
                              "em", "code", "table", "thead", "tbody", "tr", "th", "td", "figure", "img",
                              "figcaption", "pre", "br", "details", "summary", "mark"}, set(page.tags)


RANKED_BY = {"stable-easy": "confidence", "ambiguous-hard": "difficulty", "hotspot-memorized": "memorization",
             "noisy-outlier": "memorization"}


def test_texts_are_escaped_and_the_top_samples_are_inspects(made) -> None:
    text = made["out"].read_text()
    page = Tables(text)
    counts = scores_counts(made["scores"])
    for name in QUADRANTS:
        by = RANKED_BY[name]
        result = run("inspect", "--scores", made["scores"], "--quadrant", name, "--by", by, "--top", 10, "--json")
        expected = [row["sample_id"] for row in json.loads(result.stdout)]
        assert f'<h3 id="top-{name}">{name}: the first 10 of {counts[name]:,}, by {by}, highest first</h3>' in text
        rows = page.rows(f"top-{name}")
        assert [int(cells[1]) for _, cells in rows] == expected
        assert [cells[-1] for _, cells in rows] == [text_of(sid) for sid in expected]  # shown as written
    assert "<script" not in text.lower()
    assert "&lt;script&gt;document.title=&#x27;pwned 1458&#x27;&lt;/script&gt; &amp; &quot;sample&quot;" in text


def test_exports_are_what_carto_prune_and_weights_do(made) -> None:
    page = Tables(made["out"].read_text())
    exports = {q: cells for q, cells in page.rows("exports")}
    prune = json.loads(run("prune", "--scores", made["scores"], "--frac", "0.1", "--out",
                           made["dir"] / "manifest.parquet", "--json").stdout)
    assert {q: int(number(c[2])) for q, c in exports.items() if number(c[2])} == prune["pruned_by_quadrant"]
    assert re.search(rf'would remove <span id="pruned">{prune["pruned"]:,}</span> of 2,025', made["out"].read_text())
    weights = json.loads(run("weights", "--scores", made["scores"], "--out", made["dir"] / "weights.parquet",
                             "--json").stdout)["quadrants"]
    assert {q: c[5] for q, c in exports.items()} == {q: f"{w['weight']:.4f}" for q, w in weights.items()}
    assert {q: float(c[4]) for q, c in exports.items()} == {q: w["multiplier"] for q, w in weights.items()}


def test_provenance(made) -> None:
    page = Tables(made["out"].read_text())
    prov = artifacts.read_provenance(made["scores"])
    shown = {cells[0]: cells[1] for _, cells in page.tables["provenance"]}
    assert shown["command"] == "carto score with the parameters below"
    assert shown["carto version"] == prov["carto_version"]
    assert shown["log digest"] == f"{prov['parts']['sha256']} (7 parts, 20,250 rows)"
    assert shown["memorization signal"] == prov["memorization"] and "greedy hits" in prov["memorization"]
    assert shown["scores file"] == f"{made['scores']} (sha256 {artifacts.file_digest(made['scores'])})"
    assert shown["--logs digest"].endswith(": the log the scores were made from")
    # the command as run, every option spelled out
    assert shown["this report"] == (f"carto {prov['carto_version']}: carto report --scores {made['scores']} --logs "
                                    f"{SAMPLE_LOGS} --data {made['data']} --frac 0.1 --top 10 --out {made['out']}")
    assert {cells[0]: json.loads(cells[1]) for _, cells in page.rows("parameters")} == prov["parameters"]


def test_without_logs_or_data_and_the_same_page_twice(made, tmp_path: Path) -> None:
    pages = []
    for _ in range(2):  # the same command twice (the page records it, --out included)
        result = run("report", "--scores", made["scores"], "--out", tmp_path / "a.html", "--top", 0, "--frac", 0)
        assert result.exit_code == 0, result.output
        pages.append((tmp_path / "a.html").read_bytes())
    assert pages[0] == pages[1]  # no timestamps: the same inputs give the same page
    assert result.stderr.splitlines() == [
        "carto report: 2,025 samples, 3 pictures, a prune of 0 removing 0",
        f"wrote {tmp_path / 'a.html'} ({len(pages[1]) / 1024:,.0f} KiB, self-contained: opens with no network)",
    ]
    text = pages[0].decode()
    assert "Pass the training log (<code>--logs LOGS</code>) to see them." in text
    assert "Left out (<code>--top 0</code>)." in text and 'id="figure-curves"' not in text
    assert all(int(number(c[2])) == 0 for _, c in Tables(text).rows("exports"))


def test_unplaced_samples_empty_quadrants_and_no_weights(tmp_path: Path) -> None:
    """A hand-made scores file without thresholds in its provenance: two noisy outliers and two
    unplaced samples (null difficulty, null memorization); the default multipliers would weight the
    placed ones 0 and the unplaced 1, so weights exist; with only noisy outliers they would not."""
    rows = [(0, 3.0, 4.0, 1, "noisy-outlier"), (1, 3.5, 5.0, 2, "noisy-outlier"), (2, None, 1.0, 0, None),
            (3, 1.0, None, 0, None)]
    frame = pl.DataFrame([{"sample_id": i, "difficulty": d, "memorization": m, "forget_events": f, "n_seen": 4,
                           "quadrant": name} for i, d, m, f, name in rows],
                         schema={"sample_id": pl.Int64, "difficulty": pl.Float64, "memorization": pl.Float64,
                                 "forget_events": pl.Int64, "n_seen": pl.Int64, "quadrant": pl.String})
    for name, part in (("some", frame), ("noisy", frame.head(2))):
        path = tmp_path / f"{name}.parquet"
        artifacts.write(part, path, artifacts.provenance("scores", inputs=[], parameters={}))
        result = run("report", "--scores", path, "--out", tmp_path / f"{name}.html", "--frac", "0.5")
        assert result.exit_code == 0, result.output
    text = (tmp_path / "some.html").read_text()
    page = Tables(text)
    assert [(q, cells[1]) for q, cells in page.rows("quadrants")] == [
        ("stable-easy", "0"), ("ambiguous-hard", "0"), ("hotspot-memorized", "0"), ("noisy-outlier", "2"),
        ("unplaced", "2")]
    assert "High difficulty: not recorded in the scores file; high memorization: not recorded" in text
    assert '<h3 id="top-stable-easy">stable-easy: no samples</h3>' in text
    assert [int(cells[1]) for _, cells in page.rows("top-unplaced")] == [2, 3]  # null memorization last
    assert [int(cells[1]) for _, cells in page.rows("top-noisy-outlier")] == [1, 0]
    exports = {q: (cells[2], cells[5]) for q, cells in page.rows("exports")}
    assert exports == {"noisy-outlier": ("2", "0.0000"), "unplaced": ("0", "2.0000")}
    noisy = (tmp_path / "noisy.html").read_text()
    assert {q: cells[5] for q, cells in Tables(noisy).rows("exports")} == {"noisy-outlier": "—"}
    assert "No weights: with the default multipliers every sample would get weight 0" in noisy


def test_the_low_memorization_quadrants_are_ranked_by_what_separates_them(sample_findings, tmp_path: Path) -> None:
    """On zero-heavy scores every stable-easy and ambiguous-hard sample has memorization 0: ranked by
    it, their tables were ids 0, 2, 3, 4, ...; by confidence and by difficulty they are the most
    confidently learned and the hardest, as `carto inspect --by` lists them."""
    scores, out = sample_findings["scores"], tmp_path / "r.html"
    frame = pl.read_parquet(scores)
    assert run("report", "--scores", scores, "--out", out, "--findings", sample_findings["findings"]).exit_code == 0
    page = Tables(out.read_text())
    for name in ("stable-easy", "ambiguous-hard"):
        assert (frame.filter(pl.col("quadrant") == name)["memorization"] == 0).all()
        shown = [int(cells[1]) for _, cells in page.rows(f"top-{name}")]
        by = RANKED_BY[name]
        inspected = json.loads(run("inspect", "--scores", scores, "--quadrant", name, "--by", by, "--top", 10,
                                   "--json").stdout)
        assert shown == [r["sample_id"] for r in inspected]
        values = [r[by] for r in inspected]
        assert values == sorted(values, reverse=True) and values[0] > values[-1]  # they are told apart
        in_id_order = frame.filter(pl.col("quadrant") == name)["sample_id"].sort().head(10).to_list()
        assert shown != in_id_order


def test_the_findings_table_lists_each_string_marked_and_escaped(sample_findings, tmp_path: Path) -> None:
    scores, findings, out = sample_findings["scores"], sample_findings["findings"], tmp_path / "r.html"
    result = run("report", "--scores", scores, "--data", sample_findings["texts"], "--out", out, "--json")
    assert result.exit_code == 0, result.output  # the findings file the scores record is found
    frame = pl.read_parquet(findings)
    assert json.loads(result.stdout)["findings"] == frame.height
    text = out.read_text()
    rows = Tables(text).rows("findings")
    expected = frame.sort(["public", "evidence", "finding"], descending=[False, True, False])
    assert [int(cells[0]) for _, cells in rows] == expected["finding"].to_list()
    assert [cells[1] for _, cells in rows] == expected["text"].to_list()  # the string, shown as written
    assert [cells[6] for _, cells in rows] == ["public" if p else "private" for p in expected["public"]]
    assert [int(cells[3]) for _, cells in rows] == expected["copies"].to_list()
    # each string is marked in its copy's context, and that copy is one of the finding's carriers
    for (_, cells), row in zip(rows, expected.iter_rows(named=True)):
        sample = int(re.search(r"sample ([\d,]+)$", cells[2]).group(1).replace(",", ""))
        assert sample in {c["sample_id"] for c in row["copies_at"]}
    marked = re.findall(r'<td class="string"><pre class="text"><mark>(.*?)</mark>', text, re.DOTALL)
    assert marked == [html.escape(t, quote=True) for t in expected["text"]]
    prune = json.loads(run("prune", "--scores", scores, "--out", tmp_path / "m.parquet", "--json").stdout)
    assert re.search(rf'<span id="findings-pruned">{prune["pruned"]:,}</span>', text)
    # the embedded map shows the zero mass (97% of the samples) as its bar
    import matplotlib.image
    import numpy as np

    from carto_cli.report import maps

    src = re.search(r'<figure id="figure-map"><img src="data:image/png;base64,([^"]+)"', text).group(1)
    pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(src)), format="png")[..., :3]
    bar = np.abs(pixels - np.array([int(maps.ZERO_COLOUR[i:i + 2], 16) for i in (1, 3, 5)]) / 255).max(axis=2) < 0.03
    assert bar.sum() > 2_000, bar.sum()


def test_a_finding_with_markup_is_escaped_in_the_page(tmp_path: Path) -> None:
    frame = pl.DataFrame({"sample_id": [0, 1], "difficulty": [1.0, 2.0], "memorization": [12.0, 0.0],
                          "forget_events": [0, 0], "n_seen": [2, 2], "quadrant": ["hotspot-memorized", "stable-easy"],
                          "finding": [0, None]}, schema_overrides={"finding": pl.Int64})
    folder = tmp_path / "run"
    artifacts.write(frame, folder / "scores.parquet", artifacts.provenance("scores", inputs=[], parameters={}))
    copy = pl.Struct({"sample_id": pl.Int64, "start": pl.Int64, "length": pl.Int64})
    findings = pl.DataFrame({"finding": [0], "text": ["<script>x()</script>"], "tokens": [[1]], "evidence": [12.0],
                             "carriers": [1], "copies": [1], "public": [False],
                             "copies_at": [[{"sample_id": 0, "start": 3, "length": 20}]]},
                            schema_overrides={"copies_at": pl.List(copy)})
    artifacts.write(findings, folder / "findings.parquet", artifacts.provenance("findings", inputs=[], parameters={}))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "a <script>x()</script> & b"}) + "\n" + json.dumps({"text": "c"}) + "\n")
    out = tmp_path / "r.html"
    assert run("report", "--scores", folder / "scores.parquet", "--data", data, "--out", out).exit_code == 0
    text = out.read_text()
    assert "<script" not in text.lower()
    assert '<mark>&lt;script&gt;x()&lt;/script&gt;</mark>' in text
    assert '<pre class="text">a <mark>&lt;script&gt;x()&lt;/script&gt;</mark> &amp; b</pre>' in text  # in the table too


# ------------------------------------------------------------------------------ bad input


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"Error: {message}"], result.stderr
    assert "Traceback" not in result.output


def test_bad_input_is_one_line(made, tmp_path: Path) -> None:
    scores, out = made["scores"], tmp_path / "r.html"
    missing = tmp_path / "none.parquet"
    one_line_error(run("report", "--scores", missing, "--out", out),
                   f"{missing}: no such file; run `carto score LOGS` first (or pass --scores PATH)")
    for frac in ("1", "-0.1", "nan"):
        one_line_error(run("report", "--scores", scores, "--out", out, "--frac", frac),
                       f"--frac must be in [0, 1); got {float(frac)}")
    one_line_error(run("report", "--scores", scores, "--out", out, "--top", "-1"),
                   "--top must be >= 0 (0 leaves the samples out); got -1")
    one_line_error(run("report", "--scores", scores, "--out", tmp_path / "r.png"),
                   f"--out {tmp_path / 'r.png'}: the report is an HTML page; name it with .html")
    one_line_error(run("report", "--scores", scores, "--out", out, "--text-column", "text"),
                   "--text-column names a column of --data; pass --data too")
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "a"}\n{"text": "b"}\n')
    one_line_error(run("report", "--scores", scores, "--out", out, "--data", short),
                   f"{short}: 2 rows, but the scores have sample_id up to 2,024; matching by row order (row i is "
                   "sample_id i) needs at least 2,025 rows: pass the dataset the model was trained on, or add a "
                   "sample_id column")
    one_line_error(run("report", "--scores", scores, "--out", out, "--logs", tmp_path / "nologs"),
                   f"{tmp_path / 'nologs'}: no such file or directory; pass a log directory or part file")
    one_line_error(run("report", "--scores", scores, "--out", scores.with_suffix(".html"), "--logs",
                       scores.parent), f"--out {scores.with_suffix('.html')} is inside the input directory "
                   f"{scores.parent}, where it would be read as input next time; write it elsewhere")
    assert not out.exists()


def test_missing_matplotlib_is_an_install_hint(made, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if Matplotlib were not installed
    one_line_error(run("report", "--scores", made["scores"], "--out", tmp_path / "r.html"),
                   "carto report needs Matplotlib: pip install 'carto-cli[plot]'")


# ------------------------------------------------------------------------------ in a browser


class Listener:
    """A proxy that serves nothing: it records the first line of every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                if self._stop.is_set():  # and nothing left waiting to be accepted
                    return
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.lines.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    self.lines.append("(a connection without a request line)")

    def close(self) -> list[str]:
        """The requests made, but chromium's own (sent to OWN)."""
        self._stop.set()
        self._thread.join(10)
        self.sock.close()
        return [line for line in self.lines if OWN not in line]


def browse(page: Path, tmp_path: Path, *, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """Open `page` in headless chromium: its DOM after rendering (or a screenshot), and every
    request it made."""
    assert CHROMIUM is not None, "chromium is not installed; on Debian: apt-get install chromium"
    profile = tmp_path / f"profile-{page.stem}"
    (profile / "Default").mkdir(parents=True, exist_ok=True)
    (profile / "Default" / "Preferences").write_text(json.dumps({"net": {"network_prediction_options": 2}}))
    listener = Listener()
    try:
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                f"--proxy-server=http://127.0.0.1:{listener.port}", "--proxy-bypass-list=<-loopback>",
                f"--gaia-url=http://{OWN}/", f"--google-base-url=http://{OWN}/", "--no-first-run",
                # chromium 156 asks its component updater despite --disable-component-update
                f"--component-updater=url-source=http://{OWN}/",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--disable-features=NetworkTimeServiceQuerying"]
        args += ([f"--screenshot={screenshot}", "--window-size=1280,2000", "--hide-scrollbars"] if screenshot
                 else ["--dump-dom"])
        done = subprocess.run([*args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        requests = listener.close()
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, requests


@browser
def test_in_a_browser_the_counts_show_and_nothing_is_requested(made, tmp_path: Path) -> None:
    dom, requests = browse(made["out"], tmp_path)
    assert requests == []
    page = Tables(dom)
    assert {q: int(number(cells[1])) for q, cells in page.rows("quadrants")} == scores_counts(made["scores"])
    assert len(page.images) == 4 and "<script" not in dom.lower()
    shown = [cells[-1] for name in QUADRANTS for _, cells in page.rows(f"top-{name}")]
    assert len(shown) == 40 and all(re.fullmatch(r"<script>document.title='pwned (\d+)'</script> & \"sample\" "
                                                 r"\1\nsecond line", t) for t in shown)
    assert "<title>carto report: scores.parquet</title>" in dom  # the texts' scripts did not run


@browser
def test_the_listener_sees_a_planted_request_and_the_policy_blocks_it(made, tmp_path: Path) -> None:
    planted = '<img src="http://planted.invalid/pixel.png" alt="">'
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body><p>control</p>{planted}</body></html>")
    _, requests = browse(control, tmp_path)
    assert "GET http://planted.invalid/pixel.png HTTP/1.1" in requests  # so the check above can fail
    guarded = tmp_path / "guarded.html"
    guarded.write_text(made["out"].read_text().replace("<body>", f"<body>{planted}", 1))
    dom, requests = browse(guarded, tmp_path)
    assert requests == [] and "planted.invalid" in dom  # in the page, refused by its Content-Security-Policy


@browser
def test_a_screenshot_shows_the_embedded_map(made, tmp_path: Path) -> None:
    import matplotlib.image
    import numpy as np

    shot = tmp_path / "shot.png"
    _, requests = browse(made["out"], tmp_path, screenshot=shot)
    assert requests == []
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape == (2000, 1280, 3)
    assert (pixels.min(axis=2) < 0.9).mean() > 0.05  # not blank
    # the map's hotspot points (#D55E00): the embedded PNG was decoded and drawn; the page's own
    # style has no such colour
    hotspot = np.abs(pixels - np.array([0xD5, 0x5E, 0x00]) / 255).max(axis=2) < 0.08
    assert hotspot.sum() > 200, hotspot.sum()
