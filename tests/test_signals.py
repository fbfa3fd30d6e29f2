"""Label-free memorization signals (`carto score --memorization token-drop|tail-var`), on hand-made
logs whose answers can be worked out on paper, and through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
from conftest import TOKEN_EXPECTED, token_rows, write_parts
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.engines import local
from carto_cli.io import logs
from carto_cli.score import rules

# sample_id -> tail_loss per epoch 0..3 (None: not presented). Epochs 0..3 -> late_from = 2.
TAIL_LOG = {
    10: [5.0, 4.0, 3.0, 1.0],  # late values [3, 1]: std 1.0
    11: [2.0, 2.0, 2.0, 2.0],  # settled: 0.0
    12: [5.0, 4.0, 3.0, None],  # one late presentation: null
    13: [9.0, 1.0, 4.0, 2.0],  # the early swing does not count: [4, 2] -> 1.0
}


def tail_rows() -> list[dict]:
    return [
        {"sample_id": sid, "epoch": e, "step": 100 * e + sid, "loss": 1.0, "correct": True, "tail_loss": t}
        for sid, tails in TAIL_LOG.items()
        for e, t in enumerate(tails)
        if t is not None
    ]


def memorization(log_dir: Path, **params) -> dict[int, float | None]:
    result = local.score(logs.open_logs([log_dir]), rules.ScoreParams(**params))
    return dict(result.scores.select("sample_id", "memorization").iter_rows())


@pytest.mark.parametrize("k", [2, 4])
def test_token_drop_by_hand(token_log: Path, k: int) -> None:
    got = memorization(token_log, memorization="token-drop", drop_k=k)
    for sid, want in TOKEN_EXPECTED[k].items():
        assert (got[sid] is None) if want is None else math.isclose(got[sid], want), (sid, got[sid], want)


def test_token_drop_keeps_the_forget_events_beside_it(token_log: Path) -> None:
    result = local.score(logs.open_logs([token_log]), rules.ScoreParams(memorization="token-drop"))
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
        (["--memorization", "loss"], "--memorization must be one of auto, extractable, forgets, token-drop, tail-var"),
        (["--memorization", "token-drop", "--drop-k", "0"], "--drop-k must be >= 1"),
        (["--memorization", "tail-var", "--update"], "is not kept in the --update state"),
    ],
)
def test_signal_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    rows = [{"sample_id": 0, "epoch": 0, "step": 0, "loss": 1.0, "correct": True, "tail_loss": None}]
    write_parts(tmp_path / "plain", rows, n_files=1,
                schema={"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
                        "correct": pl.Boolean, "tail_loss": pl.Float32})
    result = CliRunner().invoke(app, ["score", str(tmp_path / "plain"), "--out", str(tmp_path / "s.parquet"), *args])
    assert message in result.output and "Traceback" not in result.output
    if "must be one of" in message:  # not one of its choices: a usage error (one line through `main`: test_cli)
        assert result.exit_code == 2, result.output
        return
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("signal", ["token-drop", "tail-var"])
def test_signals_of_a_bucketed_log_equal_the_in_memory_ones(tmp_path: Path, signal: str) -> None:
    rows = [dict(r, tail_loss=1.0 + r["step"] % 7) for r in token_rows()] + \
        [dict(r, token_loss=[1.0, 1.0, 1.0, 1.0]) for r in tail_rows()]
    schema = {"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
              "correct": pl.Boolean, "tail_loss": pl.Float32, "token_loss": pl.List(pl.Float16)}
    write_parts(tmp_path / "flat", rows, schema=schema)
    runner = CliRunner()
    assert runner.invoke(app, ["logs", "bucketize", str(tmp_path / "flat"), "--out", str(tmp_path / "b"),
                               "--buckets", "3"]).exit_code == 0
    outs = {}
    for name in ("flat", "b"):
        outs[name] = tmp_path / f"{name}.parquet"
        result = runner.invoke(app, ["score", str(tmp_path / name), "--out", str(outs[name]), "--memorization",
                                     signal, "--drop-k", "2"])
        assert result.exit_code == 0, result.output
    bucketed = pl.read_parquet(outs["b"])
    assert bucketed.sort("sample_id").equals(pl.read_parquet(outs["flat"]))
    if signal == "token-drop":
        got = dict(bucketed.filter(pl.col("sample_id") < 10).select("sample_id", "memorization").iter_rows())
        assert got == TOKEN_EXPECTED[2]
