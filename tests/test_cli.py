"""Every command through the CLI runner, with the exact lines a user sees, and every bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import hand_rows, write_parts
from typer.testing import CliRunner

from carto_cli import __version__
from carto_cli.cli import app

runner = CliRunner()


def run(*args: str, cwd: Path | None = None):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def tree_digest(path: Path) -> str:
    """A digest of every file under path (names and bytes): proves inputs are not modified."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def scored(hand_log: Path, tmp_path: Path) -> Path:
    out = tmp_path / "scores.parquet"
    result = run("score", hand_log, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------ the happy paths


def test_version() -> None:
    result = run("--version")
    assert result.stdout == f"carto {__version__}\n"


def test_score_prints_the_quadrant_table_and_writes_scores(hand_log: Path, tmp_path: Path) -> None:
    before = tree_digest(hand_log)
    out = tmp_path / "scores.parquet"
    result = run("score", hand_log, "--out", out)
    assert result.exit_code == 0
    warning, *lines = result.stderr.splitlines()
    assert warning == ("Warning: 1 of 8 samples (12%) is unplaced: 1 has no difficulty (no presentation at an "
                       "epoch < 2)")  # sample 5 (below)
    assert lines[0] == "carto score: 8 samples from 27 presentations in 3 part(s); 7 ever learned"
    assert lines[1] == (
        "correct = logged correct; difficulty = mean loss over epochs < 2; "
        "memorization = forget events / transitions (never-learned: zero)"
    )
    # placed: difficulties 1.5, .45, 3, 1.5, .6, 4/3, 1 -> median 1.333..; memorizations median 1/3
    assert lines[2] == "high difficulty: > 1.3333 (q0.50); high memorization: > 0.3333 (q0.50)"
    table = "\n".join(lines[3:])
    # high d (> 4/3): samples 1, 3, 4; high m (> 1/3): samples 4, 6; sample 5 has no difficulty
    assert "│ stable-easy       │       3 │ 37.5% │      0.928 │        0.111 │    0.33 │ keep        │" in table
    assert "│ ambiguous-hard    │       2 │ 25.0% │      2.250 │        0.167 │    0.50 │ up-weight   │" in table
    assert "│ hotspot-memorized │       1 │ 12.5% │      0.600 │        1.000 │    1.00 │ down-weight │" in table
    assert "│ noisy-outlier     │       1 │ 12.5% │      1.500 │        0.667 │    2.00 │ prune       │" in table
    assert "│ unplaced          │       1 │ 12.5% │" in table
    assert lines[-1] == f"wrote {out}"
    scores = pl.read_parquet(out)
    assert scores.height == 8 and scores["sample_id"].to_list() == list(range(1, 9))
    assert tree_digest(hand_log) == before  # nothing the user passed in is modified


def test_score_json_summary_on_stdout(hand_log: Path, tmp_path: Path) -> None:
    result = run("score", hand_log, "--out", tmp_path / "s.parquet", "--json")
    payload = json.loads(result.stdout)
    assert payload["samples"] == 8 and payload["rows"] == 27 and payload["parts"] == 3
    assert payload["method_used"] == "dense"  # ids 1..8: counted into arrays
    assert [q["quadrant"] for q in payload["quadrants"]] == [
        "stable-easy", "ambiguous-hard", "hotspot-memorized", "noisy-outlier", "unplaced"
    ]
    assert sum(q["samples"] for q in payload["quadrants"]) == 8


def test_score_is_byte_identical_across_runs(hand_log: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    run("score", hand_log, "--out", a)
    run("score", hand_log, "--out", b)
    assert a.read_bytes() == b.read_bytes()


def test_prune_writes_a_deterministic_manifest_with_provenance(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.parquet"
    result = run("prune", "--frac", "0.25", "--scores", scored, "--out", out)
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "carto prune: removing 2 of 8 samples (25.0%) by memorization",
        "pruned by quadrant: hotspot-memorized 1, unplaced 1",
        f"wrote {out} and {out}.json",
    ]
    manifest = pl.read_parquet(out)
    # memorization 1.0 and one forget event: samples 5 and 6; then difficulty ascending with nulls
    # last, so 6 (0.6) ranks first, then 5 (null)
    assert manifest.filter(~pl.col("keep"))["sample_id"].to_list() == [5, 6]
    assert manifest.filter(~pl.col("keep"))["prune_rank"].to_list() == [1, 0]
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["kind"] == "manifest" and sidecar["parameters"]["frac"] == 0.25
    assert sidecar["inputs"][0]["provenance"]["kind"] == "scores"
    meta = json.loads(pq.read_metadata(out).metadata[b"carto.provenance"])
    assert meta == sidecar
    again = tmp_path / "again.parquet"
    run("prune", "--frac", "0.25", "--scores", scored, "--out", again)
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("by", ["memorization", "quadrant", "difficulty", "random"])
def test_prune_rankings(scored: Path, tmp_path: Path, by: str) -> None:
    out = tmp_path / f"{by}.parquet"
    result = run("prune", "--frac", "0.5", "--scores", scored, "--out", out, "--by", by, "--json")
    payload = json.loads(result.stdout)
    assert payload["pruned"] == 4 and payload["kept"] == 4 and payload["by"] == by


def test_prune_by_difficulty_removes_the_hardest_samples(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    result = run("prune", "--frac", "0.25", "--scores", scored, "--out", out, "--by", "difficulty")
    assert result.stderr.splitlines()[0] == "carto prune: removing 2 of 8 samples (25.0%) by difficulty"
    manifest = pl.read_parquet(out)
    # difficulties 1.5, .45, 3, 1.5, null, .6, 4/3, 1 (samples 1-8): 3 first, then 1 and 4 tied at 1.5
    # (the lower sample_id first), 7, 8, 6, 2, and 5 (no early presentation) last
    assert manifest.filter(~pl.col("keep"))["sample_id"].to_list() == [1, 3]
    assert manifest["prune_rank"].to_list() == [1, 6, 0, 2, 7, 5, 3, 4]


def test_prune_says_when_the_tie_break_chose_samples(scored: Path, tmp_path: Path) -> None:
    # five samples have a forget event; pruning six takes one without
    result = run("prune", "--frac", "0.75", "--scores", scored, "--out", tmp_path / "m.parquet")
    assert ("Note: 1 pruned sample(s) have no forget event: the ranking ran out of forgotten samples "
            "and the tie-break (lowest difficulty) chose them") in result.stderr
    result = run("prune", "--frac", "0.5", "--scores", scored, "--out", tmp_path / "m.parquet")
    assert "Note:" not in result.stderr


def test_prune_never_removes_samples_without_a_memorization_and_says_so(scored: Path, tmp_path: Path) -> None:
    from carto_cli.io import artifacts

    # half the samples unplaced (as with no late presentation): a null memorization and no quadrant
    frame = pl.read_parquet(scored).with_columns(
        pl.when(pl.col("sample_id") % 2 == 0).then(pl.col(name)).alias(name) for name in ("memorization", "quadrant"))
    scores = tmp_path / "half-unplaced.parquet"
    artifacts.write(frame, scores, artifacts.read_provenance(scored))
    with_memorization = frame["memorization"].drop_nulls().len()
    assert 0 < with_memorization < int(0.99 * frame.height)
    result = run("prune", "--frac", "0.99", "--scores", scores, "--out", tmp_path / "m.parquet")
    assert result.exit_code == 0, result.output
    manifest = pl.read_parquet(tmp_path / "m.parquet")
    pruned = manifest.filter(~pl.col("keep")).join(frame, on="sample_id")
    assert pruned.height == with_memorization and pruned["memorization"].null_count() == 0
    assert (f"Note: only {with_memorization} sample(s) have a memorization score, fewer than the "
            f"{int(0.99 * frame.height)} that --frac 0.99 asks for") in " ".join(result.stderr.split())


def test_prune_zero_keeps_everything(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    run("prune", "--frac", "0", "--scores", scored, "--out", out)
    assert pl.read_parquet(out)["keep"].all()


def test_weights_table_and_file(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights.parquet"
    result = run("weights", "--scores", scored, "--out", out)
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert lines[0] == "carto weights: 8 samples, weights normalised to mean 1"
    weights = pl.read_parquet(out)
    assert weights["weight"].mean() == pytest.approx(1.0)
    # raw multipliers 3x1 + 2x2 + 1x0.5 + 1x0 + 1x1 (unplaced) = 8.5 over 8: weight = m * 8 / 8.5
    assert weights.filter(pl.col("quadrant") == "ambiguous-hard")["weight"].to_list() == pytest.approx([16 / 8.5] * 2)
    assert "│ noisy-outlier     │       1 │          0 │ 0.0000 │" in result.stderr


def test_logs_summary(hand_log: Path) -> None:
    result = run("logs", "summary", hand_log, "--json")
    payload = json.loads(result.stdout)
    assert payload == {"parts": 3, "rows": 27, "samples": 8, "epochs": 4, "epoch_range": [0, 3],
                       "ranks": 2, "skipped": [], "runs": 1, "replayed_rows": 0}


TRAIN_SCRIPT = """
import sys
from carto_cli import CartoLogger
with CartoLogger() as log:
    for epoch in range(2):
        log.record([0, 1, 2], epoch=epoch, step=epoch, loss=[1.0, 2.0, 3.0], correct=[True, False, True])
print("trained")
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("status", [0, 3])
def test_log_runs_the_command_and_passes_its_exit_status(tmp_path: Path, capfd, status: int) -> None:
    log_dir = tmp_path / "logs"
    result = run("log", "--log-dir", log_dir, "--", sys.executable, "-c", TRAIN_SCRIPT, str(status))
    assert result.exit_code == status
    assert "trained" in capfd.readouterr().out  # the child's output goes straight through
    summary = f"carto log: wrote to {log_dir}: 1 part(s), 6 rows, 3 samples, 2 epoch(s) (epochs 0..1), 1 rank(s)"
    assert summary in result.stderr
    if status:
        assert f"the training command exited with status {status}" in result.stderr


def test_log_warns_when_nothing_was_logged(tmp_path: Path) -> None:
    result = run("log", "--log-dir", tmp_path / "logs", "--", sys.executable, "-c", "pass")
    assert result.exit_code == 0
    assert "no parts were written" in result.stderr


# ------------------------------------------------------------------ bad input: one line, exit 1


def test_missing_path(tmp_path: Path) -> None:
    assert_one_line_error(run("score", tmp_path / "nope"), "nope: no such file or directory")


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("score", tmp_path / "empty"), "no finished log parts")


def test_file_that_is_not_parquet(tmp_path: Path) -> None:
    bad = tmp_path / "notes.parquet"
    bad.write_text("hello")
    assert_one_line_error(run("score", bad), str(bad), "a text file, not a log part")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(b"PAR1\x15\x04\x15")  # a part cut short: still called unreadable, --skip-corrupt named
    assert_one_line_error(run("score", cut), str(cut), "not a readable Parquet file", "--skip-corrupt")


def test_truncated_part_fails_naming_it_or_is_skipped_with_a_warning(hand_log: Path, tmp_path: Path) -> None:
    part = sorted(hand_log.glob("*.parquet"))[0]
    truncated = hand_log / "part-r00000-cut-000000.parquet"
    truncated.write_bytes(part.read_bytes()[:-40])
    assert_one_line_error(run("score", hand_log, "--out", tmp_path / "s.parquet"), str(truncated), "--skip-corrupt")
    result = run("score", hand_log, "--out", tmp_path / "s.parquet", "--skip-corrupt")
    assert result.exit_code == 0
    warning = " ".join(result.stderr.split("carto score:")[0].split())
    assert warning.startswith(f"Warning: skipped {truncated}: not a readable Parquet file (")
    assert warning.count(str(truncated)) == 1 and "pass --skip-corrupt" not in warning  # it was passed


def test_missing_required_column(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "step"} for r in hand_rows()]
    [part, *_] = write_parts(tmp_path / "logs", rows)
    assert_one_line_error(run("score", tmp_path / "logs"), "required column 'step' is missing")
    # --skip-corrupt leaves out unreadable parts only, never one that breaks the contract
    assert_one_line_error(run("score", tmp_path / "logs", "--skip-corrupt"), "required column 'step' is missing")


def test_mistyped_required_column(tmp_path: Path) -> None:
    rows = [dict(r, loss=str(r["loss"])) for r in hand_rows()]
    write_parts(tmp_path / "logs", rows)
    assert_one_line_error(run("score", tmp_path / "logs"), "column 'loss' has type large_string, expected float")


def test_null_sample_ids(tmp_path: Path) -> None:
    rows = hand_rows()
    rows[0]["sample_id"] = None
    write_parts(tmp_path / "logs", rows, n_files=1)
    assert_one_line_error(run("score", tmp_path / "logs"), "column 'sample_id' has 1 null value(s)")


def test_nonfinite_losses_are_reported(tmp_path: Path) -> None:
    rows = hand_rows()
    rows[0]["loss"] = float("nan")
    rows[1]["loss"] = float("inf")
    write_parts(tmp_path / "logs", rows)
    result = run("score", tmp_path / "logs", "--out", tmp_path / "s.parquet")
    assert result.exit_code == 0
    assert "Warning: dropped 2 row(s) with a NaN or infinite loss" in result.stderr
    assert_one_line_error(run("score", tmp_path / "logs", "--nonfinite", "error"), "2 row(s) have a NaN")


def test_a_loss_beyond_the_bound_is_refused(tmp_path: Path) -> None:
    rows = hand_rows()
    rows[0]["loss"] = 2e9
    write_parts(tmp_path / "logs", rows)
    assert_one_line_error(run("score", tmp_path / "logs"), "column 'loss' holds values up to 2e+09")


@pytest.mark.parametrize("method", ["auto", "bitmask", "general"])
def test_losses_whose_sums_overflow_are_refused_by_name(tmp_path: Path, method: str) -> None:
    """Each loss under the bound, but a sample's four add up beyond the exact sums' Int64 (the
    dense kernel declines such a log; the Polars kernels then name the column, not a damaged part)."""
    rows = [dict(r, loss=9.9e8) for r in hand_rows()]
    write_parts(tmp_path / "logs", rows)
    counts = pl.DataFrame(rows).group_by("sample_id").len()["len"]
    beyond = int((counts * 9.9e8 * 2**32 >= 2**63).sum())  # three rows or more
    assert 0 < beyond < counts.len()
    result = run("score", tmp_path / "logs", "--method", method, "--out", tmp_path / "s.parquet")
    assert_one_line_error(result, f"column 'loss': the losses of {beyond} sample(s)", "per-sample mean negative")
    assert not (tmp_path / "s.parquet").exists()


@pytest.mark.parametrize("frac", ["-0.1", "1", "1.5", "nan"])
def test_frac_outside_range(scored: Path, frac: str) -> None:
    assert_one_line_error(run("prune", "--frac", frac, "--scores", scored), "--frac must be in [0, 1)")


def test_scores_file_that_is_not_one(hand_log: Path, tmp_path: Path) -> None:
    part = sorted(hand_log.glob("*.parquet"))[0]
    assert_one_line_error(run("prune", "--frac", "0.1", "--scores", part, "--out", tmp_path / "m.parquet"),
                          "not a carto scores file")
    text = tmp_path / "scores.txt"
    text.write_text("sample_id,score\n")
    assert_one_line_error(run("weights", "--scores", text, "--out", tmp_path / "w.parquet"),
                          "not a readable Parquet file")
    assert_one_line_error(run("weights", "--scores", tmp_path / "absent.parquet"), "run `carto score LOGS` first")


def test_output_may_not_overwrite_an_input(scored: Path, hand_log: Path) -> None:
    before = tree_digest(scored)
    assert_one_line_error(run("prune", "--frac", "0.1", "--scores", scored, "--out", scored), "is also an input")
    assert tree_digest(scored) == before
    assert_one_line_error(run("score", hand_log, "--out", hand_log / "scores.parquet"), "inside the input directory")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--correct-from", "argmax"], "--correct-from must be one of log, loss, tail, acc"),
        (["--never-learned", "1000"], "--never-learned must be one of zero, max, exclude"),
        (["--d-quantile", "2"], "--d-quantile must be in [0, 1]"),
        (["--correct-from", "loss", "--threshold", "low"], "--threshold must be a number or a percentile"),
        (["--engine", "dask"], "--engine must be one of local, ray"),
        (["--engine", "local", "--address", "ray://x:10001"], "--address applies to --engine ray only"),
    ],
)
def test_bad_score_options(hand_log: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    result = run("score", hand_log, "--out", tmp_path / "s.parquet", *args)
    if "must be one of" in fragment:  # not one of its choices: a malformed command line, exit 2 (tested one line
        assert result.exit_code == 2 and fragment in result.output, result.output  # through `main` below)
    else:
        assert_one_line_error(result, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--seeds", "0"], "need --seeds >= 1"), (["--first-seed", "998", "--seeds", "3"], "every seed < 1000"),
     (["--jobs", "0"], "--jobs must be >= 1"), (["--frac", "1.5"], "--frac must be in [0, 1)")],
)
def test_bad_experiment_options(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(run("experiment", "--out", tmp_path / "exp", "--quick", *args), fragment)


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for command in ("carto log", "carto score", "carto findings", "carto prune", "carto mask", "carto weights",
                    "carto logs summary", "carto logs bucketize", "carto experiment"):
        assert f"{command} " in readme, command


NO_NETWORK = """
import runpy, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network use at run time: " + repr(args))

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
socket.getaddrinfo = refuse
sys.argv = ["carto", "score", sys.argv[1], "--out", sys.argv[2]]
runpy.run_module("carto_cli.cli", run_name="__main__")
"""


def test_the_first_command_needs_no_network_at_run_time(tmp_path: Path) -> None:
    """The README's claim, as it words it (pip fetches wheels, so 'no network' alone was not true),
    and checked: its first command, `carto score sample_logs/`, with every socket connection and
    name lookup refused."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "then no network at run time" in readme
    done = subprocess.run([sys.executable, "-c", NO_NETWORK, str(Path(__file__).parent.parent / "sample_logs"),
                           str(tmp_path / "scores.parquet")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "carto score: 2,025 samples from 20,250 presentations" in done.stderr
    assert (tmp_path / "scores.parquet").exists()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["score"], "Error: Missing argument 'paths'; see `carto score --help`"),
        (["prune", "--frac", "abc"], "Error: Invalid value for '--frac'"),
        (["score", "x", "--bogus"], "Error: No such option: --bogus"),
    ],
)
def test_usage_errors_of_the_carto_script_are_one_line_with_exit_2(argv: list[str], line: str) -> None:
    """Through `main` (what the `carto` script runs), not the test runner: Typer's own usage
    errors become one line instead of its boxed panel."""
    done = subprocess.run([sys.executable, "-m", "carto_cli.cli", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(line) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["inspect", "--scores", "{scores}", "--quadrant", "hotspot"],
         "Error: --quadrant must be one of stable-easy, ambiguous-hard, hotspot-memorized, noisy-outlier, unplaced; "
         "got 'hotspot'; see `carto inspect --help`"),
        (["inspect", "--scores", "{scores}", "--by", "memorisation"],
         "Error: --by memorisation: not a numeric column of {scores}; choose one of difficulty, memorization, "),
        (["prune", "--scores", "{scores}", "--frac", "0.1", "--by", "memorisation", "--out", "{tmp}/m.parquet"],
         "Error: --by must be one of memorization, quadrant, difficulty, random; got 'memorisation'; see "
         "`carto prune --help`"),
        (["map", "--scores", "{scores}", "--y", "memorisation", "--out", "{tmp}/m.png"],
         "Error: --y memorisation: not a numeric column of the scores file; choose one of difficulty, "),
        (["score", "{log}", "--never-learned", "1000", "--out", "{tmp}/s.parquet"],
         "Error: --never-learned must be one of zero, max, exclude; got '1000'; see `carto score --help`"),
        (["score", "{log}", "--memorization", "memorisation", "--out", "{tmp}/s.parquet"],
         "Error: --memorization must be one of"),
        (["score", "{log}", "--engine", "dask", "--out", "{tmp}/s.parquet"],
         "Error: --engine must be one of local, ray; got 'dask'; see `carto score --help`"),
        (["experiment", "--quick", "--regime", "nope", "--out", "{tmp}/exp"], "Error: --regime must be one of"),
    ],
)
def test_a_value_that_is_not_one_of_its_choices_is_a_usage_error(scored: Path, hand_log: Path, tmp_path: Path,
                                                                  argv: list[str], line: str) -> None:
    """One rule for every command: a value outside its option's choices is a malformed command line,
    as click's own `Invalid value` is: one line through `main`, exit status 2, the help named."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    where = {"scores": scored, "log": hand_log, "tmp": outputs}
    argv = [a.format(**where) for a in argv]
    done = subprocess.run([sys.executable, "-m", "carto_cli.cli", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(line.format(**where)) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.rstrip().endswith(f"; see `carto {argv[0]} --help`")
    assert not list(outputs.iterdir())  # nothing written


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["logs", "summary", "--help"]])
def test_help_shows_flags_without_a_type(argv: list[str]) -> None:
    """A flag takes no value: its help line must not read like `--version <bool>`."""
    result = run(*argv)
    assert result.exit_code == 0
    assert "--version" in result.output or argv != ["--help"]
    assert "<bool>" not in result.output and "BOOLEAN" not in result.output


def test_the_cli_constants_written_out_for_a_fast_help_agree_with_their_modules() -> None:
    import importlib

    from carto_cli.cli import inspect_command, map_command, report_command
    from carto_cli.export import manifests
    from carto_cli.log import shim
    from carto_cli.report import html, inspect, maps

    app_module = importlib.import_module("carto_cli.cli.app")  # (carto_cli.cli.app is also the Typer app's name)
    assert app_module.LOG_DIR_ENV == shim.LOG_DIR_ENV
    assert app_module.PRUNE_BY == manifests.PRUNE_BY
    assert map_command.SCATTER_MAX == maps.SCATTER_MAX
    assert inspect_command.QUADRANT_CHOICES == inspect.QUADRANT_CHOICES
    assert (inspect_command.DEFAULT_BY, inspect_command.DEFAULT_TOP) == (inspect.DEFAULT_BY, inspect.DEFAULT_TOP)
    assert (report_command.DEFAULT_FRAC, report_command.DEFAULT_TOP) == (html.DEFAULT_FRAC, html.DEFAULT_TOP)
