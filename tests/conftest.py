"""Shared fixtures: tiny hand-made logs whose scores are known by hand.

`HAND_LOG` lists each sample's presentations as (epoch, step, loss, correct); `EXPECTED` gives the
scores worked out by hand from the definitions in carto_cli/score/ (rules.py, state.py) (early_epochs=2). The rows
are spread over two ranks and three files in scrambled order, as a real multi-rank log would be.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import polars as pl
import pytest

# sample_id -> [(epoch, step, loss, correct), ...]
HAND_LOG = {
    # learned at epoch 1, forgotten at 2, relearned at 3: one forget event in 3 transitions
    1: [(0, 1, 2.0, False), (1, 11, 1.0, True), (2, 21, 1.5, False), (3, 31, 0.5, True)],
    # always correct: no forget event
    2: [(0, 2, 0.5, True), (1, 12, 0.4, True), (2, 22, 0.3, True), (3, 32, 0.2, True)],
    # never learned: forget events 0; memorization depends on --never-learned
    3: [(0, 3, 3.0, False), (1, 13, 3.0, False), (2, 23, 3.0, False), (3, 33, 3.0, False)],
    # flips every epoch: two forget events in 3 transitions
    4: [(0, 4, 1.0, True), (1, 14, 2.0, False), (2, 24, 1.0, True), (3, 34, 2.0, False)],
    # first seen at epoch 2: no early presentation, so difficulty is null
    5: [(2, 25, 0.7, True), (3, 35, 0.9, False)],
    # seen in epochs 0 and 2 only (a gap): the two presentations are consecutive
    6: [(0, 6, 0.6, True), (2, 26, 1.2, False)],
    # presented twice in epoch 1 (steps 12 and 15): ordered by step
    7: [(0, 7, 1.0, True), (1, 17, 1.0, True), (1, 18, 2.0, False), (2, 27, 2.0, False)],
    # two presentations at the same step 8: a tie is ordered incorrect first, so no forget event
    8: [(0, 8, 1.0, True), (0, 8, 1.0, False), (1, 18, 1.0, True)],
}

EXPECTED = {
    # sample: (difficulty, forget_events, n_seen, n_correct, first_learned_epoch, memorization[zero])
    1: (1.5, 1, 4, 2, 1, 1 / 3),
    2: (0.45, 0, 4, 4, 0, 0.0),
    3: (3.0, 0, 4, 0, None, 0.0),
    4: (1.5, 2, 4, 2, 0, 2 / 3),
    5: (None, 1, 2, 1, 2, 1.0),
    6: (0.6, 1, 2, 1, 0, 1.0),
    7: (4 / 3, 1, 4, 2, 0, 1 / 3),
    8: (1.0, 0, 3, 2, 0, 0.0),
}


def assert_hand_scores(scores: pl.DataFrame) -> None:
    """`scores` (as written by any scoring path) hold exactly the EXPECTED values of HAND_LOG."""
    rows = {row["sample_id"]: row for row in scores.iter_rows(named=True)}
    assert sorted(rows) == sorted(HAND_LOG)
    for sid, (difficulty, forgets, n_seen, n_correct, first, memorization) in EXPECTED.items():
        row = rows[sid]
        if difficulty is None:
            assert row["difficulty"] is None, sid
        else:
            assert math.isclose(row["difficulty"], difficulty), sid
        assert (row["forget_events"], row["n_seen"], row["n_correct"]) == (forgets, n_seen, n_correct), sid
        assert row["first_learned_epoch"] == first, sid
        assert row["ever_learned"] == (n_correct > 0), sid
        assert math.isclose(row["memorization"], memorization), sid
        # Dataset Cartography's coordinates over p = exp(-loss) of every presentation (all losses >= 0)
        p = [math.exp(-loss) for _, _, loss, _ in HAND_LOG[sid]]
        mean = sum(p) / len(p)
        assert abs(row["confidence"] - mean) <= 3.5e-10, sid
        assert abs(row["variability"] - math.sqrt(sum((x - mean) ** 2 for x in p) / len(p))) <= 3.5e-10, sid
        assert row["correctness"] == n_correct / n_seen, sid


def hand_rows() -> list[dict]:
    rows = []
    for sid, presentations in HAND_LOG.items():
        for epoch, step, loss, correct in presentations:
            rows.append(
                {"sample_id": sid, "epoch": epoch, "step": step, "loss": loss, "correct": correct,
                 "token_acc": 0.9 if correct else 0.1, "tail_loss": loss * 2}
            )
    return rows


def write_parts(directory: Path, rows: list[dict], *, n_files: int = 3, seed: int = 0,
                schema: dict | None = None) -> list[Path]:
    """Scramble rows, deal them to two ranks and `n_files` files, write each as a part."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        chunk = [dict(r, rank=j % 2) for j, r in enumerate(rows[i::n_files])]
        if not chunk:
            continue
        path = directory / f"part-r{i % 2:05d}-test-{i:06d}.parquet"
        pl.DataFrame(chunk, schema=schema).write_parquet(path)
        paths.append(path)
    return paths


@pytest.fixture
def hand_log(tmp_path: Path) -> Path:
    """A log directory holding HAND_LOG, scrambled over two ranks and three files."""
    log_dir = tmp_path / "logs"
    write_parts(log_dir, hand_rows())
    return log_dir


# ------------------------------------------------------------------ per-token losses (token-drop)

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


def token_rows() -> list[dict]:
    """TOKEN_LOG as log rows (loss and correctness constant: only the token losses matter)."""
    return [
        {"sample_id": sid, "epoch": e, "step": s, "loss": 1.0, "correct": True,
         "token_loss": [float(x) for x in losses]}
        for sid, presentations in TOKEN_LOG.items()
        for e, s, losses in presentations
    ]


@pytest.fixture
def token_log(tmp_path: Path) -> Path:
    """A log directory holding TOKEN_LOG with a float16 token_loss column, as the shim writes it."""
    schema = {"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
              "correct": pl.Boolean, "token_loss": pl.List(pl.Float16)}
    write_parts(tmp_path / "tok", token_rows(), schema=schema)
    return tmp_path / "tok"


SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"


def sample_logs_rows() -> tuple[list[bytes], list[bytes]]:
    """The training and held-out rows of sample_logs/ (129 bytes each: 128 inputs and the last
    target), cut from the shipped corpus as scripts/make_sample_logs.py cut them (N_SAMPLES,
    SAMPLE_LEN, VAL_FRAC, SEED); training row i is sample_id i."""
    from carto_cli.experiment.corpus import cpython_text, to_bytes_samples, train_val_split

    train, val = train_val_split(to_bytes_samples(cpython_text(2_250 * 129), 128), 0.1, 0)
    return [bytes(s) for s in train], [bytes(s) for s in val]


@pytest.fixture(scope="session")
def sample_findings(tmp_path_factory) -> dict[str, Path]:
    """`carto score sample_logs/ --data TRAIN --tokenizer bytes --reference VAL`: real scores placed
    by findings (97% of the samples at memorization 0: zero-heavy, as real scores are) and their
    findings file; `texts` holds the training texts by row order (the 128 input bytes decoded),
    as `carto inspect --data` and `carto report --data` read them."""
    from typer.testing import CliRunner

    from carto_cli.cli import app

    tmp = tmp_path_factory.mktemp("sample-findings")
    train, val = sample_logs_rows()
    paths = {name: tmp / f"{name}.parquet" for name in ("train", "val", "texts", "scores", "findings")}
    pl.DataFrame({"input_ids": [list(row) for row in train]}).write_parquet(paths["train"])
    pl.DataFrame({"input_ids": [list(row) for row in val]}).write_parquet(paths["val"])
    pl.DataFrame({"text": [row[:-1].decode("utf-8", errors="replace") for row in train]}).write_parquet(paths["texts"])
    result = CliRunner().invoke(app, ["score", str(SAMPLE_LOGS), "--data", str(paths["train"]), "--tokenizer", "bytes",
                                      "--reference", str(paths["val"]), "--out", str(paths["scores"]),
                                      "--findings", str(paths["findings"])])
    assert result.exit_code == 0, result.output
    return paths
