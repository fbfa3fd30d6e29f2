"""Label-free memorization signals (`carto score --memorization token-drop|tail-var`), on hand-made
logs whose answers can be worked out on paper, and through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
from conftest import write_parts
from typer.testing import CliRunner

from carto_cli import logs, scoring
from carto_cli.cli import app

NAN = float("nan")
# sample_id -> [(epoch, step, token losses per position)]; early epochs are 0 and 1.
TOKEN_LOG = {
    # early mean per position [3, 4, 4, 1]; the last late presentation (step 40) is [0.5, 0, 4, 1]:
    # drops [2.5, 4, 0, 0]; k=2 -> (4 + 2.5) / 2 = 3.25; k=4 -> 6.5 / 4 = 1.625
    0: [(0, 0, [4, 4, 4, 1]), (1, 10, [2, 4, 4, 1]), (3, 40, [0.5, 0, 4, 1]), (2, 20, [1, 1, 1, 1])],
    # an ignored position (NaN) is no drop; early [2, NaN, 2, 2], last [1, 0, 2, 2]: drops [1, 0, 0]
    # k=2 -> 0.5; k=4 -> the mean of the 3 there are, 1/3
    1: [(0, 1, [2, NAN, 2, 2]), (2, 21, [1, 0, 2, 2])],
    # only early presentations: no late loss to drop to -> null
    2: [(0, 2, [5, 5, 5, 5]), (1, 12, [5, 5, 5, 5])],
    # two presentations at the same step in epochs 2 and 3: the later epoch is the last one
    3: [(0, 3, [2, 2, 2, 2]), (2, 30, [2, 2, 2, 2]), (3, 30, [0, 2, 2, 2])],
}
TOKEN_EXPECTED = {2: {0: 3.25, 1: 0.5, 2: None, 3: 1.0}, 4: {0: 1.625, 1: 1 / 3, 2: None, 3: 0.5}}

# sample_id -> tail_loss per epoch 0..3 (None: not presented). Epochs 0..3 -> late_from = 2.
TAIL_LOG = {
    10: [5.0, 4.0, 3.0, 1.0],  # late values [3, 1]: std 1.0
    11: [2.0, 2.0, 2.0, 2.0],  # settled: 0.0
    12: [5.0, 4.0, 3.0, None],  # one late presentation: null
    13: [9.0, 1.0, 4.0, 2.0],  # the early swing does not count: [4, 2] -> 1.0
}


def token_rows() -> list[dict]:
    return [
        {"sample_id": sid, "epoch": e, "step": s, "loss": 1.0, "correct": True,
         "token_loss": [float(x) for x in losses]}
        for sid, presentations in TOKEN_LOG.items()
        for e, s, losses in presentations
    ]


def tail_rows() -> list[dict]:
    return [
        {"sample_id": sid, "epoch": e, "step": 100 * e + sid, "loss": 1.0, "correct": True, "tail_loss": t}
        for sid, tails in TAIL_LOG.items()
        for e, t in enumerate(tails)
        if t is not None
    ]


@pytest.fixture
def token_log(tmp_path: Path) -> Path:
    schema = {"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
              "correct": pl.Boolean, "token_loss": pl.List(pl.Float16)}
    write_parts(tmp_path / "tok", token_rows(), schema=schema)
    return tmp_path / "tok"


def memorization(log_dir: Path, **params) -> dict[int, float | None]:
    result = scoring.score(logs.open_logs([log_dir]), scoring.ScoreParams(**params))
    return dict(result.scores.select("sample_id", "memorization").iter_rows())


@pytest.mark.parametrize("k", [2, 4])
def test_token_drop_by_hand(token_log: Path, k: int) -> None:
    got = memorization(token_log, memorization="token-drop", drop_k=k)
    for sid, want in TOKEN_EXPECTED[k].items():
        assert (got[sid] is None) if want is None else math.isclose(got[sid], want), (sid, got[sid], want)


def test_token_drop_keeps_the_forget_events_beside_it(token_log: Path) -> None:
    result = scoring.score(logs.open_logs([token_log]), scoring.ScoreParams(memorization="token-drop"))
    assert result.memorization.startswith("mean of the 4 largest per-token loss drops")
    assert result.scores["forget_events"].to_list() == [0, 0, 0, 0]  # every row is correct


def test_tail_variability_by_hand(tmp_path: Path) -> None:
    write_parts(tmp_path / "tail", tail_rows())
    got = memorization(tmp_path / "tail", memorization="tail-var")
    assert got == {10: 1.0, 11: 0.0, 12: None, 13: 1.0}
    # --late-from moves the window: from epoch 1, sample 13 is [1, 4, 2] -> std sqrt(14/9)
    got = memorization(tmp_path / "tail", memorization="tail-var", late_from=1)
    assert math.isclose(got[13], math.sqrt(14 / 9))


def test_signals_do_not_depend_on_file_order(tmp_path: Path) -> None:
    schema = {"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
              "correct": pl.Boolean, "token_loss": pl.List(pl.Float16)}
    results = []
    for seed in range(3):
        write_parts(tmp_path / f"t{seed}", token_rows(), n_files=seed + 2, seed=seed, schema=schema)
        results.append(memorization(tmp_path / f"t{seed}", memorization="token-drop"))
    assert results[0] == results[1] == results[2]


def test_score_cli_ranks_by_a_signal_and_says_which(token_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(app, ["score", str(token_log), "--out", str(out), "--memorization", "token-drop",
                                      "--drop-k", "2"])
    assert result.exit_code == 0, result.output
    assert "memorization = mean of the 2 largest per-token loss drops" in result.output
    scores = pl.read_parquet(out)
    assert scores.filter(pl.col("sample_id") == 0)["memorization"].item() == 3.25
    assert scores.filter(pl.col("sample_id") == 2)["quadrant"].item() is None  # null signal: unplaced


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memorization", "token-drop"], "column 'token_loss' is missing, needed by --memorization token-drop"),
        (["--memorization", "tail-var"], "column 'tail_loss' holds only nulls"),
        (["--memorization", "loss"], "--memorization must be one of forgets, token-drop, tail-var"),
        (["--memorization", "token-drop", "--drop-k", "0"], "--drop-k must be >= 1"),
        (["--memorization", "tail-var", "--update"], "runs in memory on the local engine"),
    ],
)
def test_signal_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    rows = [{"sample_id": 0, "epoch": 0, "step": 0, "loss": 1.0, "correct": True, "tail_loss": None}]
    write_parts(tmp_path / "plain", rows, n_files=1,
                schema={"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
                        "correct": pl.Boolean, "tail_loss": pl.Float32})
    result = CliRunner().invoke(app, ["score", str(tmp_path / "plain"), "--out", str(tmp_path / "s.parquet"), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
