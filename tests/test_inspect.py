"""`carto inspect` through the CLI runner: every option, the exact output, and every bad input.

Most tests use SCORES, a scores file made by hand (values chosen so that every ranking rule shows:
a tie broken by sample_id, a null difficulty ranked last, an unplaced sample); one uses
`sample_logs/` and rebuilds its training texts from the shipped corpus, as
scripts/make_sample_logs.py cut them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.io import artifacts

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

# sample_id: (difficulty, memorization, forget_events, n_seen, quadrant)
SCORES = {
    0: (0.5, 2.0, 1, 4, "hotspot-memorized"),
    1: (2.5, 0.0, 0, 4, "ambiguous-hard"),
    2: (0.25, 3.0, 2, 4, "hotspot-memorized"),
    3: (3.0, 4.0, 1, 4, "noisy-outlier"),
    4: (0.5, 2.0, 0, 4, "hotspot-memorized"),  # ties with 0 on memorization and difficulty
    5: (None, 1.0, 0, 2, None),  # no early presentation: unplaced
}
TEXTS = [
    "zero\nsecond line",
    "one",
    "two [bold]not markup[/bold]",
    "three " + "x" * 100,
    "four",
    "five",
]


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_error(result, message: str) -> None:
    """One line, exactly `Error: message`, exit status 1, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"Error: {message}"], result.stderr
    assert "Traceback" not in result.output


def assert_usage_error(result, message: str) -> None:
    """A malformed command line, as click reports its own: exit status 2, `Error: message` last
    (through the test runner, after click's usage lines; the `carto` script prints the one line:
    tests/test_cli.py)."""
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == f"Error: {message}", result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def scores(tmp_path: Path) -> Path:
    frame = pl.DataFrame(
        [{"sample_id": sid, "difficulty": d, "memorization": m, "forget_events": f, "n_seen": n, "quadrant": q}
         for sid, (d, m, f, n, q) in SCORES.items()],
        schema={"sample_id": pl.Int64, "difficulty": pl.Float64, "memorization": pl.Float64,
                "forget_events": pl.Int64, "n_seen": pl.Int64, "quadrant": pl.String},
    )
    path = tmp_path / "scores.parquet"
    artifacts.write(frame, path, artifacts.provenance("scores", inputs=[], parameters={}))
    return path


def as_json(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def row(sid: int, rank: int, **extra) -> dict:
    d, m, f, n, q = SCORES[sid]
    return {"rank": rank, "sample_id": sid, "quadrant": q, "difficulty": d, "memorization": m,
            "forget_events": f, "n_seen": n, **extra}


# ------------------------------------------------------------------ selection and ranking


def test_json_of_a_quadrant_is_exact(scores: Path) -> None:
    result = run("inspect", "--scores", scores, "--quadrant", "hotspot-memorized", "--json")
    assert as_json(result) == [row(2, 1), row(0, 2), row(4, 3)]  # 0 and 4 tie: sample_id decides
    assert list(as_json(result)[0]) == ["rank", "memorization", "sample_id", "quadrant", "difficulty",
                                        "forget_events", "n_seen"]
    assert result.stderr == ""


def test_by_any_numeric_column_nulls_last(scores: Path) -> None:
    result = run("inspect", "--scores", scores, "--by", "difficulty", "--json")
    assert [r["sample_id"] for r in as_json(result)] == [3, 1, 0, 4, 2, 5]
    assert list(as_json(result)[0])[:2] == ["rank", "difficulty"]
    result = run("inspect", "--scores", scores, "--by", "forget_events", "--json")
    assert [r["sample_id"] for r in as_json(result)] == [2, 0, 3, 1, 4, 5]


def test_top_and_top_zero(scores: Path) -> None:
    assert [r["rank"] for r in as_json(run("inspect", "--scores", scores, "--top", "2", "--json"))] == [1, 2]
    assert len(as_json(run("inspect", "--scores", scores, "--top", "0", "--json"))) == 6
    assert len(as_json(run("inspect", "--scores", scores, "--top", "100", "--json"))) == 6


def test_unplaced_quadrant(scores: Path) -> None:
    assert as_json(run("inspect", "--scores", scores, "--quadrant", "unplaced", "--json")) == [row(5, 1)]


@pytest.mark.parametrize("kind", ["txt", "parquet", "csv"])
def test_ids_file(scores: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"ids.{kind}"
    if kind == "txt":
        path.write_text("# flagged by hand\n1\n\n5\n3\n1\n")
    else:
        frame = pl.DataFrame({"sample_id": [1, 5, 3], "why": ["a", "b", "c"]})
        frame.write_parquet(path) if kind == "parquet" else frame.write_csv(path)
    result = run("inspect", "--scores", scores, "--ids", path, "--json")
    assert as_json(result) == [row(3, 1), row(5, 2), row(1, 3)]  # ranked, not in file order


def test_terminal_table(scores: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(data)
    result = run("inspect", "--scores", scores, "--data", data, "--top", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        "carto inspect: the first 3 of the 6 samples, by memorization, highest first",
        f"text: column 'text' of {data}, matched by row order",
    ]
    assert lines[3].split("┃")[1:-1] == [" rank ", " sample_id ", " quadrant          ", " memorization ",
                                          " difficulty ", " forget_events ",
                                          " text" + " " * 30]
    # 120 columns when stderr is not a terminal (and COLUMNS is not set): the scores whole, the
    # text folded into the 33 columns left, not cut
    assert lines[5] == ("│    1 │         3 │ noisy-outlier     │        4.000 │      3.000 │             1 │ "
                        "three " + "x" * 27 + " │")
    assert lines[6:9] == ["│      │           │                   │              │            │               │ "
                          + x + " " * (33 - len(x)) + " │" for x in ("x" * 33, "x" * 33, "x" * 7)]
    assert {len(line) for line in lines[2:]} == {120}
    assert "│ two [bold]not markup[/bold]" in lines[9]  # shown as written, not as Rich markup
    assert "│ zero⏎second line " in lines[10]


def test_the_width_of_a_pipe_is_columns_and_a_long_text_wraps(scores: Path, tmp_path: Path) -> None:
    """Through the `carto` script with stderr a pipe, as a user's `2> out.txt` or `| less` has it."""
    data = tmp_path / "train.parquet"
    long = "three " + " ".join(f"word{i}" for i in range(60))  # 400 characters: more than 4 lines of the room
    pl.DataFrame({"text": [*TEXTS[:3], long, *TEXTS[4:]]}).write_parquet(data)
    argv = [sys.executable, "-m", "carto_cli.cli", "inspect", "--scores", str(scores), "--data", str(data),
            "--top", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    table = done.stderr.splitlines()[2:]
    assert {len(line) for line in table} == {160}
    shown = "".join(line.split("│")[-2][1:-1] for line in table[3:-1]).rstrip()  # the folded lines, joined
    assert shown.startswith("three word0 word1") and "word30" in shown and shown.endswith("…")
    assert len(table) - 4 == 4  # the sample's text folded into 4 lines of its column, then cut


def test_terminal_without_data_and_unplaced(scores: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n")
    result = run("inspect", "--scores", scores, "--ids", ids)
    lines = result.stderr.splitlines()
    assert lines[0] == f"carto inspect: the one sample listed in {ids} (of 6), by memorization, highest first"
    assert lines[4] == "│    1 │         5 │ unplaced │        1.000 │          — │             0 │"


@pytest.mark.parametrize(
    ("args", "headline"),
    [
        ([], "the first 20 of the 2,025 samples"),
        (["--top", "0"], "the 2,025 samples"),
        (["--quadrant", "noisy-outlier", "--top", "5"], "the first 5 of the {noisy} noisy-outlier samples (of 2,025)"),
        (["--ids", "{ids}"], "the 3 samples listed in {ids} (of 2,025)"),
        (["--finding", "0", "--top", "2"], "the first 2 of the {holders} samples that hold finding 0 (of 2,025)"),
    ],
)
def test_headlines_say_plainly_what_is_shown(sample_findings, tmp_path: Path, args: list[str],
                                            headline: str) -> None:
    ids = tmp_path / "carriers.txt"
    ids.write_text("1\n2\n3\n")
    result = run("inspect", "--scores", sample_findings["scores"], *[a.format(ids=ids) for a in args])
    assert result.exit_code == 0, result.output
    # the counts, from the files the command read (the findings' numbers move with their rules)
    scores = pl.read_parquet(sample_findings["scores"])
    noisy = scores.filter(pl.col("quadrant") == "noisy-outlier").height
    found = pl.read_parquet(sample_findings["findings"]).filter(pl.col("finding") == 0)
    holders = len({c["sample_id"] for c in found["copies_at"][0]})
    assert noisy > 5 and holders > 2  # the headline cuts them
    expected = headline.format(ids=ids, noisy=noisy, holders=holders)
    assert result.stderr.splitlines()[0] == f"carto inspect: {expected}, by memorization, highest first"


# ------------------------------------------------------------------ findings


def test_a_finding_lists_every_carrier_with_the_string_marked(sample_findings) -> None:
    findings = pl.read_parquet(sample_findings["findings"]).filter(pl.col("finding") == 0).row(0, named=True)
    carriers = sorted({copy["sample_id"] for copy in findings["copies_at"]})
    shown = as_json(run("inspect", "--scores", sample_findings["scores"], "--data", sample_findings["texts"],
                        "--finding", "0", "--top", "0", "--json"))
    assert sorted(r["sample_id"] for r in shown) == carriers and len(carriers) == findings["carriers"]
    for r in shown:
        assert r["marked"], r  # every copy is found in its text: the finding's string, or its longest part
        for start, end in r["marked"]:
            assert end - start >= 4 and r["text"][start:end] in findings["text"]
    exact = [r for r in shown if findings["text"] in r["text"]]
    assert exact and all([r["text"][s:e] for s, e in r["marked"]] == [findings["text"]] * r["text"].count(
        findings["text"]) for r in exact)
    result = run("inspect", "--scores", sample_findings["scores"], "--data", sample_findings["texts"], "--finding", "0")
    lines = result.stderr.splitlines()
    assert lines[2] == (f"finding 0 (private, {findings['copies']} copies in {findings['carriers']} samples, evidence "
                        f"{findings['evidence']:.1f}): {findings['text']}")
    assert lines[3] == f"marked ⟦like this⟧: finding 0, from {sample_findings['findings']}"
    assert f"⟦{findings['text']}⟧" in result.stderr


def test_the_strongest_private_finding_of_each_sample_is_marked_escaped(scores: Path, tmp_path: Path) -> None:
    """Hand-made findings beside the scores: the markup in a finding's text is shown as written."""
    frame = pl.read_parquet(scores).with_columns(
        finding=pl.Series([None, None, 0, 1, None, None], dtype=pl.Int64))
    with_findings = tmp_path / "with" / "scores.parquet"
    artifacts.write(frame, with_findings, artifacts.provenance("scores", inputs=[], parameters={}))
    copy = pl.Struct({"sample_id": pl.Int64, "start": pl.Int64, "length": pl.Int64})
    findings = pl.DataFrame(
        {"finding": [0, 1], "text": ["[bold]not", "xxxx"], "tokens": [[1], [2]], "evidence": [12.0, 11.0],
         "carriers": [1, 1], "copies": [1, 1], "public": [False, False],
         "copies_at": [[{"sample_id": 2, "start": 4, "length": 9}], [{"sample_id": 3, "start": 6, "length": 4}]]},
        schema_overrides={"copies_at": pl.List(copy)})
    artifacts.write(findings, tmp_path / "with" / "findings.parquet",
                    artifacts.provenance("findings", inputs=[], parameters={}))
    data = tmp_path / "train.parquet"
    pl.DataFrame({"text": TEXTS}).write_parquet(data)
    result = run("inspect", "--scores", with_findings, "--data", data, "--top", "3")
    assert result.exit_code == 0, result.output
    where = tmp_path / "with" / "findings.parquet"
    assert f"marked ⟦like this⟧: each sample's strongest private finding, from {where}" in result.stderr
    assert "│       0 │ two ⟦[bold]not⟧ " in result.stderr  # the sample's finding, 0: shown as written
    shown = as_json(run("inspect", "--scores", with_findings, "--data", data, "--top", "3", "--json"))
    assert [(r["sample_id"], r["finding"], r["marked"]) for r in shown] == [
        (3, 1, [[6, 106]]), (2, 0, [[4, 13]]), (0, None, [])]  # overlapping occurrences merged
    # without the findings file: a note, nothing marked
    (tmp_path / "with" / "findings.parquet").unlink()
    result = run("inspect", "--scores", with_findings, "--data", data, "--top", "1")
    assert "Note: the scores have findings, but no findings file was found" in result.stderr
    assert "⟦" not in result.stderr.splitlines()[-3]


def test_bad_finding_options(sample_findings, scores: Path, tmp_path: Path) -> None:
    last = pl.read_parquet(sample_findings["findings"])["finding"].max()
    assert_error(run("inspect", "--scores", sample_findings["scores"], "--finding", "999"),
                 f"--finding 999: no such finding in {sample_findings['findings']} (0..{last}); `carto findings` "
                 "lists them")
    assert_error(run("inspect", "--scores", scores, "--finding", "0"),
                 f"--finding needs the findings file: {scores} records none and there is no findings.parquet beside "
                 "it; pass --findings FILE (written by `carto score --data`)")
    assert_error(run("inspect", "--scores", sample_findings["scores"], "--finding", "0", "--quadrant", "unplaced"),
                 "--quadrant, --ids and --finding choose the samples in different ways; pass one of them")
    assert_error(run("inspect", "--scores", scores, "--findings", tmp_path / "none.parquet"),
                 f"--findings {tmp_path / 'none.parquet'}: no such file; pass the findings file `carto score --data` "
                 "wrote")


# ------------------------------------------------------------------ datasets


def test_dataset_with_sample_id_in_any_order_parquet(scores: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.parquet"
    order = [4, 2, 0, 5, 1, 3, 9]  # any order; an id the scores do not have is fine
    pl.DataFrame({"sample_id": order, "label": [0] * 7,
                  "content": [TEXTS[i] if i < 6 else "nine" for i in order]}).write_parquet(data)
    result = run("inspect", "--scores", scores, "--data", data, "--quadrant", "hotspot-memorized", "--json")
    assert as_json(result) == [row(2, 1, text=TEXTS[2]), row(0, 2, text=TEXTS[0]), row(4, 3, text=TEXTS[4])]


def test_dataset_jsonl_by_row_order(scores: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"label": i, "document": t}) + "\n" for i, t in enumerate(TEXTS)))
    result = run("inspect", "--scores", scores, "--data", data, "--top", "0", "--json")
    assert {r["sample_id"]: r["text"] for r in as_json(result)} == dict(enumerate(TEXTS))


def test_dataset_csv_only_string_column_and_text_column(scores: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    pl.DataFrame({"n": range(6), "review": TEXTS, "title": [f"t{i}" for i in range(6)]}).write_csv(data)
    result = run("inspect", "--scores", scores, "--data", data, "--text-column", "title", "--json")
    assert [r["text"] for r in as_json(result)] == ["t3", "t2", "t0", "t4", "t5", "t1"]
    single = tmp_path / "single.csv"
    pl.DataFrame({"n": range(6), "review": TEXTS}).write_csv(single)
    result = run("inspect", "--scores", scores, "--data", single, "--top", "1", "--json")
    assert as_json(result)[0]["text"] == TEXTS[3]


def test_datasets_directory(scores: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    from datasets.table import InMemoryTable

    path = tmp_path / "train_ds"
    # a fixed fingerprint: from_dict's hashing (dill) fails on some datasets/pyarrow pairs (5.2.0/26.0.1)
    table = InMemoryTable(pa.table({"label": list(range(6)), "text": TEXTS}))
    datasets.Dataset(table, fingerprint="test").save_to_disk(str(path))
    result = run("inspect", "--scores", scores, "--data", path, "--top", "1", "--json")
    assert as_json(result)[0]["text"] == TEXTS[3]


def test_datasets_directory_without_the_package(scores: Path, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "train_ds"
    path.mkdir()
    (path / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    result = run("inspect", "--scores", scores, "--data", path)
    assert_error(result, f"{path} is a Hugging Face datasets directory, and reading it needs the datasets "
                         "package: pip install datasets")


def test_hotspot_texts_of_sample_logs(tmp_path: Path) -> None:
    """The acceptance case: the texts behind hotspot-memorized on sample_logs/ are the samples' texts."""
    from carto_cli.experiment.corpus import cpython_text, to_bytes_samples, train_val_split

    # as scripts/make_sample_logs.py cut them: N_SAMPLES, SAMPLE_LEN, VAL_FRAC, SEED
    train, _ = train_val_split(to_bytes_samples(cpython_text(2_250 * 129), 128), 0.1, 0)
    texts = [bytes(sample[:-1]).decode("utf-8", errors="replace") for sample in train]  # (N, 129) -> inputs
    data = tmp_path / "train.parquet"
    pl.DataFrame({"text": texts}).write_parquet(data)
    scores = tmp_path / "scores.parquet"
    assert run("score", ROOT / "sample_logs", "--out", scores).exit_code == 0
    result = run("inspect", "--scores", scores, "--quadrant", "hotspot-memorized", "--data", data, "--json")
    shown = as_json(result)
    assert len(shown) == 20
    assert {r["quadrant"] for r in shown} == {"hotspot-memorized"}
    assert all(r["text"] == texts[r["sample_id"]] for r in shown)
    memorization = [r["memorization"] for r in shown]
    assert memorization == sorted(memorization, reverse=True)
    result = run("inspect", "--scores", scores, "--quadrant", "hotspot-memorized", "--data", data, "--top", "3")
    first = texts[shown[0]["sample_id"]].replace("\n", "⏎")[:20]
    assert first in result.stderr.splitlines()[5]


# ------------------------------------------------------------------ bad input


def test_bad_options(scores: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    assert_usage_error(run("inspect", "--scores", scores, "--quadrant", "hotspot"),
                       "--quadrant must be one of stable-easy, ambiguous-hard, hotspot-memorized, noisy-outlier, "
                       "unplaced; got 'hotspot'")
    assert_error(run("inspect", "--scores", scores, "--quadrant", "unplaced", "--ids", ids),
                 "--quadrant, --ids and --finding choose the samples in different ways; pass one of them")
    assert_usage_error(run("inspect", "--scores", scores, "--by", "quadrant"),
                       f"--by quadrant: not a numeric column of {scores}; choose one of difficulty, memorization, "
                       "forget_events, n_seen")
    assert_error(run("inspect", "--scores", scores, "--top", "-1"),
                 "--top must be >= 0 (0 shows every sample); got -1")
    assert_error(run("inspect", "--scores", scores, "--text-column", "text"),
                 "--text-column names a column of --data; pass --data too")
    missing = tmp_path / "nope.parquet"
    assert_error(run("inspect", "--scores", missing),
                 f"{missing}: no such file; run `carto score LOGS` first (or pass --scores PATH)")


def test_bad_id_lists(scores: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n2\nthree\n")
    assert_error(run("inspect", "--scores", scores, "--ids", bad),
                 f"{bad}, line 3: 'three' is not a sample id; --ids takes one integer id a line")
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("1\n7\n8\n")
    assert_error(run("inspect", "--scores", scores, "--ids", unknown),
                 f"--ids: 2 of the 3 ids are not in {scores} (such as 7, 8); pass ids of samples that carto scored")
    no_column = tmp_path / "ids.parquet"
    pl.DataFrame({"id": [1]}).write_parquet(no_column)
    assert_error(run("inspect", "--scores", scores, "--ids", no_column),
                 f"{no_column}: no sample_id column (columns: id); --ids needs a sample_id column, or a text "
                 "file with one id a line")
    absent = tmp_path / "absent.txt"
    assert_error(run("inspect", "--scores", scores, "--ids", absent),
                 f"{absent}: no such file; pass --ids a text file with one sample id a line, or a Parquet or "
                 "CSV file with a sample_id column")


KNOWN = ".parquet, .jsonl, .ndjson, .json (JSON Lines), .csv, or a `datasets` save_to_disk directory"


def test_bad_datasets(scores: Path, tmp_path: Path) -> None:
    def inspect(data: Path, *more: str):
        return run("inspect", "--scores", scores, "--data", data, *more)

    no_text = tmp_path / "no_text.parquet"
    pl.DataFrame({"label": range(6), "score": [0.5] * 6}).write_parquet(no_text)
    assert_error(inspect(no_text), f"{no_text}: no text column found (columns: label, score); name the text "
                                   "column with --text-column")
    two = tmp_path / "two.csv"
    pl.DataFrame({"a": ["x"] * 6, "b": ["y"] * 6}).write_csv(two)
    assert_error(inspect(two), f"{two}: 2 string columns (columns: a, b); name the text column with --text-column")
    assert_error(inspect(two, "--text-column", "body"),
                 f"{two}: no column 'body' (columns: a, b); pass one of them to --text-column")

    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert_error(inspect(short, "--quadrant", "ambiguous-hard"),  # sample 1 fits, sample 5 of the scores not
                 f"{short}: 2 rows, but the scores have sample_id up to 5; matching by row order (row i is "
                 "sample_id i) needs at least 6 rows: pass the dataset the model was trained on, or add a "
                 "sample_id column")
    partial = tmp_path / "partial.parquet"
    pl.DataFrame({"sample_id": [0, 1, 2], "text": ["a", "b", "c"]}).write_parquet(partial)
    assert_error(inspect(partial), f"{partial}: 3 of the 6 selected sample ids are not in its sample_id column; "
                                   "pass the dataset the model was trained on")
    twice = tmp_path / "twice.parquet"
    pl.DataFrame({"sample_id": [0, 1, 2, 3, 4, 5, 3], "text": ["a"] * 7}).write_parquet(twice)
    assert_error(inspect(twice), f"{twice}: sample_id 3 appears more than once; each sample needs exactly one row")
    strings = tmp_path / "strings.csv"
    pl.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "text": ["a"] * 6}).write_csv(strings)
    assert_error(inspect(strings), f"{strings}: its sample_id column is String, not integers; rename it, or make "
                                   "it the integer ids the training run logged")

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    result = inspect(garbage)
    assert_error(result, result.stderr.strip()[len("Error: "):])
    assert result.stderr.startswith(f"Error: {garbage}: not readable as a dataset (")
    assert result.stderr.rstrip().endswith(f"); pass a {KNOWN}")
    text = tmp_path / "train.txt"
    text.write_text("hello\n")
    assert_error(inspect(text), f"{text}: unknown dataset format '.txt'; pass a {KNOWN}")
    absent = tmp_path / "absent.parquet"
    assert_error(inspect(absent), f"{absent}: no such file or directory; pass the training dataset with --data")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_error(inspect(folder), f"{folder}: a directory, but not one written by `datasets` save_to_disk (no "
                                  f"state.json); pass a {KNOWN}")


def test_scores_from_carto_score(hand_log: Path, tmp_path: Path) -> None:
    """A scores file carto score wrote (the hand log, ids 1..8) goes straight in; ids match by row order."""
    scores = tmp_path / "scores.parquet"
    assert run("score", hand_log, "--out", scores).exit_code == 0
    data = tmp_path / "train.csv"
    pl.DataFrame({"text": [f"sample {i}" for i in range(9)]}).write_csv(data)
    shown = as_json(run("inspect", "--scores", scores, "--data", data, "--json"))
    assert [(r["sample_id"], r["text"]) for r in shown][:3] == [(5, "sample 5"), (6, "sample 6"), (4, "sample 4")]


def test_datasets_directory_with_splits(scores: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    from datasets.table import InMemoryTable

    path = tmp_path / "splits"
    split = datasets.Dataset(InMemoryTable(pa.table({"text": TEXTS})), fingerprint="test")
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(path))
    assert_error(run("inspect", "--scores", scores, "--data", path),
                 f"{path}: holds several splits (train, test); pass the training split's directory, such as "
                 f"{path / 'train'}")
