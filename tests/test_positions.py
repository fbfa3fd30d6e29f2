"""Sketch positions do not depend on padding (issue 21).

The sketch's positions (`top_pos`, the start of each run in `hit_runs`) are logged relative to the
sample's first target position, so one sample logged unpadded, right-padded, left-padded by a pad
length that changes every epoch (dynamic padding with a left-padding tokenizer) or behind a masked
prompt logs the same sketch and scores the same with `carto score`. Before, the left-padded log
moved the early epochs' top losses away from the late epochs' runs of greedy hits and the default
signal (`extractable`) dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch", reason="the logging shim needs the torch extra")

from carto_cli import CartoLogger  # noqa: E402
from carto_cli.cli import app  # noqa: E402
from carto_cli.errors import OptionError  # noqa: E402
from carto_cli.io import logs  # noqa: E402
from carto_cli.log import schema  # noqa: E402

torch.set_num_threads(1)
runner = CliRunner()
V = 9  # vocabulary
LENGTHS = [12, 9, 14, 7]  # target tokens of each sample (ids 0..3)
EPOCHS = 6
IGNORE = -100
# pad length per epoch of the "left, changing" layout (and prompt length of the "prompt" layout)
LEFT = [3, 0, 5, 1, 4, 2]
WIDTH = max(LENGTHS) + max(LEFT)


def content(sample: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (L, V), labels (L,)) of one sample's targets at one epoch: in the early epochs a few
    large, distinct token losses and few greedy hits; later a long run of greedy hits that covers
    some of those positions and not others, so that `extractable` depends on where they are."""
    L = LENGTHS[sample]
    g = torch.Generator().manual_seed(1000 * sample + epoch)
    labels = torch.randint(0, V, (L,), generator=g)
    logits = torch.randn(L, V, generator=g)
    if epoch < 2:
        logits[torch.arange(L), labels] -= torch.linspace(0.5, 6.0, L)[torch.randperm(L, generator=g)]
    else:
        hit = torch.zeros(L, dtype=torch.bool)
        hit[1:L - 2] = True  # one run of L - 3 hits, between two misses
        logits[hit, labels[hit]] += 8.0  # distinct small losses: no ties in the top-k
    return logits, labels


def row(sample: int, epoch: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample's row in `layout`: its targets, and positions without a target around them."""
    logits, labels = content(sample, epoch)
    L = len(labels)
    if layout == "unpadded":
        return logits, labels
    # row width, and the positions without a target before the sample's targets
    width, before = {
        "right": (WIDTH, 0),
        "left, fixed": (max(LENGTHS) + 3, max(LENGTHS) + 3 - L),  # the pad all on the left
        "left, changing": (max(LENGTHS) + LEFT[epoch], max(LENGTHS) + LEFT[epoch] - L),  # dynamic padding
        "prompt": (WIDTH, LEFT[epoch]),  # a masked prompt, then the targets, then right padding
    }[layout]
    g = torch.Generator().manual_seed(7 + epoch)
    row_logits = torch.randn(width, V, generator=g) * 3  # whatever a pad or prompt position predicts
    row_labels = torch.full((width,), IGNORE)
    row_logits[before:before + L], row_labels[before:before + L] = logits, labels
    return row_logits, row_labels


def log_layout(out: Path, layout: str, token_losses: bool = False) -> None:
    """Every sample once per epoch, one sample per `record` (so each has its own row width when unpadded)."""
    step = 0
    with CartoLogger(out, tail_k=4, sketch_k=4, sketch_runs=3, run_id=layout.replace(", ", "-"),
                     token_losses=token_losses) as log:
        for epoch in range(EPOCHS):
            for sample in range(len(LENGTHS)):
                logits, labels = row(sample, epoch, layout)
                log.record([sample], epoch=epoch, step=step, logits=logits[None], labels=labels[None])
                step += 1


LAYOUTS = ["unpadded", "right", "left, fixed", "left, changing", "prompt"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    """layout -> (the log's rows sorted by step, carto score's scores sorted by sample_id)."""
    root = tmp_path_factory.mktemp("positions")
    out = {}
    for layout in LAYOUTS:
        directory = root / layout.replace(", ", "-")
        log_layout(directory / "logs", layout)
        scores = directory / "scores.parquet"
        result = runner.invoke(app, ["score", str(directory / "logs"), "--out", str(scores)])
        assert result.exit_code == 0, result.output
        rows = pl.concat([pl.read_parquet(p.path) for p in logs.open_logs([directory / "logs"]).parts])
        out[layout] = rows.sort("step"), pl.read_parquet(scores).sort("sample_id")
    return out


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_carto_score_gives_the_same_values_whatever_the_padding(scored, layout: str) -> None:
    _, want = scored["unpadded"]
    _, got = scored[layout]
    assert want["memorization"].drop_nulls().len() == len(LENGTHS)  # every sample has a value to compare
    assert want["memorization"].min() > 0  # and the early losses do fall in the late runs
    assert got["memorization"].to_list() == want["memorization"].to_list()  # extractable, exactly
    for name in want.columns:
        if want[name].dtype.is_float():  # the mean loss sums zeros at other places: float32 rounding
            np.testing.assert_allclose(got[name].to_numpy(), want[name].to_numpy(), rtol=1e-6, err_msg=name)
        else:
            assert got[name].to_list() == want[name].to_list(), name


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_the_logged_sketch_is_relative_to_the_first_target(scored, layout: str) -> None:
    want, _ = scored["unpadded"]
    got, _ = scored[layout]
    for name in schema.SKETCH_COLUMNS:
        assert got[name].to_list() == want[name].to_list(), name
    # unpadded, the first target is position 0: the row positions are the relative ones
    first = want.row(0, named=True)
    assert max(first["top_pos"]) < LENGTHS[0] and first["top_pos"] != [0] * 4


@pytest.mark.parametrize("layout", ["left, changing", "prompt"])
def test_token_losses_count_from_the_first_target_too(tmp_path: Path, layout: str) -> None:
    """`token_loss` element j is the loss at the first target + j, so token-drop scores a sample the
    same whatever the padding (row positions moved the early losses away from the late ones)."""
    got = {}
    for name in ("unpadded", layout):
        log_layout(tmp_path / name, name, token_losses=True)
        result = runner.invoke(app, ["score", str(tmp_path / name), "--memorization", "token-drop",
                                     "--out", str(tmp_path / f"{name}.parquet")])
        assert result.exit_code == 0, result.output
        rows = pl.concat([pl.read_parquet(p.path) for p in logs.open_logs([tmp_path / name]).parts]).sort("step")
        got[name] = rows, pl.read_parquet(tmp_path / f"{name}.parquet").sort("sample_id")
    (want_rows, want), (rows, scores) = got["unpadded"], got[layout]
    assert scores["memorization"].to_list() == want["memorization"].to_list()
    assert want["memorization"].min() > 0
    for unpadded, padded, sample in zip(want_rows["token_loss"].to_list(), rows["token_loss"].to_list(),
                                        want_rows["sample_id"].to_list()):
        L = LENGTHS[sample]
        assert padded[:L] == unpadded[:L] and all(np.isnan(x) for x in padded[L:])


def test_every_part_says_how_its_positions_are_counted(tmp_path: Path) -> None:
    logger = CartoLogger(tmp_path, buckets=2)
    logger.record([0, 1], epoch=0, step=0, logits=torch.randn(2, 3, V), labels=torch.randint(0, V, (2, 3)))
    logger.flush()
    logger.record([0, 1], epoch=0, step=1, loss=[1.0, 2.0], correct=[True, False])
    logger.close()
    assert len(logger.parts_written) == 4  # two parts, two buckets each
    for path in logger.parts_written:
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items()}
        assert meta[schema.META_POSITIONS] == schema.POSITIONS_FIRST_TARGET
        assert schema.META_LABEL_SHIFT not in meta  # not declared


def test_a_declared_label_shift_reaches_the_parts_written_after_it_is_set(tmp_path: Path) -> None:
    logger = CartoLogger(tmp_path, rows_per_part=1, label_shift=0)
    logger.record([0], epoch=0, step=0, loss=[1.0], correct=[True])
    logger.flush()
    logger.label_shift = 1  # an integration that learns the shift at its first step
    logger.record([1], epoch=0, step=1, loss=[1.0], correct=[True])
    logger.close()
    shifts = [pq.read_schema(p).metadata.get(schema.META_LABEL_SHIFT.encode()) for p in logger.parts_written]
    assert shifts == [b"0", b"1"]
    with pytest.raises(OptionError, match="label_shift must be None or an integer >= 0; got -1"):
        logger.label_shift = -1
    with pytest.raises(OptionError, match="label_shift must be None or an integer >= 0; got 'one'"):
        CartoLogger(tmp_path / "bad", label_shift="one")


def test_samples_without_targets_and_short_samples_keep_the_padding_values(tmp_path: Path) -> None:
    """Fewer targets than k pad with (0, NaN), no run with (0, 0), whatever the first target; a sample
    without targets logs exactly what it did before."""
    labels = torch.full((3, 8), IGNORE)
    labels[0, 5:7] = 1  # two targets, from position 5
    labels[1, 6] = 2  # one target, at position 6
    logits = torch.zeros(3, 8, V)
    logits[0, 5, 1] = 10.0  # a hit at the first target, a miss at the second
    with CartoLogger(tmp_path, sketch_k=3, sketch_runs=2) as log:
        log.record([0, 1, 2], epoch=0, step=0, logits=logits, labels=labels)
    got = pl.read_parquet(log.parts_written).sort("sample_id")
    assert got["top_pos"].to_list() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert [np.isnan(x).tolist() for x in got["top_loss"].to_list()] == [[False, False, True], [False, True, True],
                                                                          [True, True, True]]
    assert got["hit_runs"].to_list() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


SKETCH_POSITIONS_CHECK = """
import torch
from carto_cli.log import fused, sketch
torch.manual_seed(0)
for B, T in [(4, 37), (3, 5), (2, 1), (5, 300)]:
    loss, hit, valid = torch.rand(B, T) * 5, torch.rand(B, T) < 0.7, torch.rand(B, T) < 0.9
    valid[:, : T // 3] = False  # a masked prefix: the first target is past position 0
    valid[0] = False  # no target at all
    for k, r in [(10, 6), (3, 2)]:
        got = fused.launch_sketch(torch, fused._load("sketch_kernel"), loss, hit, valid, k, r)
        want = sketch.sketch(torch, loss, hit, valid, k, r)
        for a, b in zip(got, want):
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), (T, k, r)
print("ok")
"""


def test_the_sketch_kernel_logs_positions_relative_to_the_first_target_in_the_triton_interpreter() -> None:
    """The CUDA path (one Triton launch) writes the same relative positions as the PyTorch path."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", SKETCH_POSITIONS_CHECK], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
