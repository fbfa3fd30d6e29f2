"""Packed sequences: `record(None, ..., segment_ids=)` logs each document of a packed row exactly as if it
had been logged alone, in its own row padded with ignore_index, with the same per-position logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from carto_cli import CartoLogger
from carto_cli.cli import app
from carto_cli.errors import CartoError, OptionError
from carto_cli.io import logs

torch.set_num_threads(1)
V = 11
IGNORE = -100
# The token losses are the same float32 values either way. `tail_loss` sums the same k of them in the same
# order (largest first); `loss` sums a document's positions one after another (a scatter-add) where the
# unpacked row sum is a vectorised tree: equal to float32 rounding.
EXACT = ["sample_id", "epoch", "step", "n_tokens", "token_acc", "correct", "tail_loss", "top_pos", "top_loss",
         "hit_runs"]
ROUNDED = ["loss"]


def read_log(path: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p.path) for p in logs.open_logs([path]).parts])


def document(g: torch.Generator, length: int, targets: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (L, V), labels (L,)) of one document: the greedy prediction hits about half of the
    labels, in runs, so that the hit-run sketch has something to find."""
    labels = torch.randint(0, V, (length,), generator=g)
    logits = torch.randn(length, V, generator=g)
    hit = torch.rand(length, generator=g) < 0.6
    logits[hit, labels[hit]] += 6.0
    if targets == "none":
        labels[:] = IGNORE
    elif targets == "some":
        labels[torch.rand(length, generator=g) < 0.3] = IGNORE
    return logits, labels


def packed_batch(g: torch.Generator, rows: list[list[tuple[int, int, str]]], T: int):
    """Rows of (sample id, length, targets) documents packed end to end, the rest of each row padding
    with segment id -1 (and random logits and labels there: they must count for no document).
    Returns the packed (logits, labels, segment_ids) and each document's own (id, logits, labels)."""
    logits = torch.randn(len(rows), T, V, generator=g)
    labels = torch.randint(0, V, (len(rows), T), generator=g)
    segments = torch.full((len(rows), T), -1)
    docs = []
    for b, row in enumerate(rows):
        at = 0
        for sample_id, length, targets in row:
            doc_logits, doc_labels = document(g, length, targets)
            logits[b, at:at + length], labels[b, at:at + length] = doc_logits, doc_labels
            segments[b, at:at + length] = sample_id
            docs.append((sample_id, doc_logits, doc_labels))
            at += length
        assert at <= T
    return logits, labels, segments, docs


def unpacked(docs, T: int):
    """Each document alone in its own row of T positions, padded with ignore_index labels."""
    logits = torch.randn(len(docs), T, V)
    labels = torch.full((len(docs), T), IGNORE)
    for b, (_, doc_logits, doc_labels) in enumerate(docs):
        logits[b, :len(doc_labels)], labels[b, :len(doc_labels)] = doc_logits, doc_labels
    return [sample_id for sample_id, _, _ in docs], logits, labels


def assert_same_rows(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Every column equal, NaN equal to NaN, `loss` to float32 rounding; rows matched by sample id, step
    and loss (a document split in pieces has several rows of one id and step)."""
    key = ["sample_id", "step", "loss"]
    got, want = got.sort(key), want.sort(key)
    assert got.height == want.height
    for name in EXACT:
        assert got[name].to_list() == want[name].to_list() or _equal_with_nan(got[name], want[name]), name
    for name in ROUNDED:
        np.testing.assert_allclose(got[name].to_numpy(), want[name].to_numpy(), rtol=2e-6, err_msg=name)


def _equal_with_nan(a: pl.Series, b: pl.Series) -> bool:
    left = np.array(a.to_list(), dtype=np.float64)
    right = np.array(b.to_list(), dtype=np.float64)
    return left.shape == right.shape and np.array_equal(left, right, equal_nan=True)


def log_both(tmp_path: Path, rows, T: int, seed: int = 0, **logger_kwargs) -> tuple[pl.DataFrame, pl.DataFrame]:
    g = torch.Generator().manual_seed(seed)
    logits, labels, segments, docs = packed_batch(g, rows, T)
    with CartoLogger(tmp_path / "packed", tail_k=4, **logger_kwargs) as log:
        log.record(None, epoch=0, step=3, logits=logits, labels=labels, segment_ids=segments)
    ids, one_logits, one_labels = unpacked(docs, T)
    with CartoLogger(tmp_path / "alone", tail_k=4, **logger_kwargs) as log:
        log.record(ids, epoch=0, step=3, logits=one_logits, labels=one_labels)
    return read_log(tmp_path / "packed"), read_log(tmp_path / "alone")


LAYOUTS = {
    "one document a row": [[(1, 24, "all")], [(2, 24, "some")], [(3, 24, "all")]],
    "many short documents": [[(i, 3, "all") for i in range(10, 18)], [(i, 2, "some") for i in range(20, 32)]],
    "padding at the end": [[(1, 5, "all"), (2, 9, "all")], [(3, 17, "some")], [(4, 1, "all")]],
    "documents of one token": [[(i, 1, "all") for i in range(24)], [(30, 1, "all"), (31, 1, "none"), (32, 2, "all")]],
    "a document without targets": [[(1, 6, "all"), (2, 7, "none"), (3, 11, "some")]],
    "longer than the sketch and the tail": [[(1, 16, "all"), (2, 8, "some")], [(3, 23, "all")]],
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_packed_documents_are_logged_as_if_each_were_alone(tmp_path: Path, layout) -> None:
    got, want = log_both(tmp_path, layout, T=24)
    assert sorted(got["sample_id"]) == sorted(i for row in layout for i, _, _ in row)
    assert_same_rows(got, want)


@pytest.mark.parametrize("seed", range(8))
def test_random_layouts_match_unpacked_logging(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    T = 32
    rows, next_id = [], 100
    for _ in range(4):
        row, at = [], int(rng.integers(0, 3))  # a row may start with padding too
        while at < T and rng.random() < 0.85:
            length = int(rng.integers(1, min(12, T - at) + 1))
            row.append((next_id, length, str(rng.choice(["all", "some", "none"], p=[0.6, 0.3, 0.1]))))
            next_id += 1
            at += length
        rows.append(row)
    got, want = log_both(tmp_path, rows, T=T, seed=seed)
    assert_same_rows(got, want)


def test_a_leading_pad_and_a_gap_between_documents(tmp_path: Path) -> None:
    """Documents that do not start at position 0: the sketch's positions are relative to their first."""
    g = torch.Generator().manual_seed(1)
    logits, labels, segments, docs = packed_batch(g, [[(1, 5, "all"), (2, 6, "all")]], T=16)
    shifted = torch.full_like(segments, -1)
    shifted[:, 2:7], shifted[:, 9:15] = 1, 2  # pad, document 1, pad, document 2, pad
    moved_logits, moved_labels = torch.randn(1, 16, V), torch.randint(0, V, (1, 16))
    moved_logits[0, 2:7], moved_labels[0, 2:7] = docs[0][1], docs[0][2]
    moved_logits[0, 9:15], moved_labels[0, 9:15] = docs[1][1], docs[1][2]
    with CartoLogger(tmp_path / "packed") as log:
        log.record(None, epoch=0, step=0, logits=moved_logits, labels=moved_labels, segment_ids=shifted)
    ids, one_logits, one_labels = unpacked(docs, 16)
    with CartoLogger(tmp_path / "alone") as log:
        log.record(ids, epoch=0, step=0, logits=one_logits, labels=one_labels)
    assert_same_rows(read_log(tmp_path / "packed"), read_log(tmp_path / "alone"))


def test_a_document_split_across_rows_is_one_presentation_per_piece(tmp_path: Path) -> None:
    """Document 7 continues from row 0 into row 1, and appears twice in row 2 around document 8: each
    stretch is a presentation of its own, with the columns of that stretch logged alone."""
    layout = [[(1, 10, "all"), (7, 6, "all")], [(7, 9, "all"), (2, 7, "some")],
              [(7, 4, "all"), (8, 3, "all"), (7, 5, "all")]]
    got, want = log_both(tmp_path, layout, T=16)
    assert sorted(got.filter(pl.col("sample_id") == 7)["n_tokens"]) == [4, 5, 6, 9]
    assert_same_rows(got, want)


def test_sketch_off_chunked_logits_and_keep(tmp_path: Path) -> None:
    layout = [[(1, 4, "all"), (2, 5, "some")], [(3, 12, "all")], [(4, 2, "all"), (5, 2, "none")]]
    got, want = log_both(tmp_path / "off", layout, T=12, sketch_k=0, sketch_runs=0, chunk_bytes=1)
    assert got["top_pos"].null_count() == got.height
    assert_same_rows(got, want)
    g = torch.Generator().manual_seed(0)
    logits, labels, segments, _ = packed_batch(g, layout, T=12)
    with CartoLogger(tmp_path / "keep") as log:
        log.record(None, epoch=0, step=0, logits=logits, labels=labels, segment_ids=segments,
                   keep=torch.tensor([True, False, True]))
    assert sorted(read_log(tmp_path / "keep")["sample_id"]) == [1, 2, 4, 5]  # row 1 masked whole


def test_a_row_with_more_documents_than_the_cap_fails_at_the_next_call(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels, segments, _ = packed_batch(g, [[(1, 2, "all"), (2, 2, "all"), (3, 2, "all")],
                                                   [(4, 3, "all")]], T=8)
    with CartoLogger(tmp_path / "at-cap") as log:  # exactly the cap: every document logged
        log.record(None, epoch=0, step=0, logits=logits, labels=labels, segment_ids=segments, max_docs_per_row=3)
    assert sorted(read_log(tmp_path / "at-cap")["sample_id"]) == [1, 2, 3, 4]
    log = CartoLogger(tmp_path / "over")
    log.record(None, epoch=0, step=5, logits=logits, labels=labels, segment_ids=segments, max_docs_per_row=2)
    message = r"a packed row at step 5 held 3 documents, more than max_docs_per_row; pass max_docs_per_row=3 or more"
    with pytest.raises(CartoError, match=message) as failure:
        log.flush()
    assert "\n" not in str(failure.value)
    with pytest.raises(CartoError, match="max_docs_per_row=3"):
        log.record(None, epoch=0, step=6, logits=logits, labels=labels, segment_ids=segments)
    with pytest.raises(CartoError, match="max_docs_per_row=3"):
        log.close()
    assert not list((tmp_path / "over").glob("*.parquet"))  # the failing batch was not written in part


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"segment_ids": torch.zeros(2, 5, dtype=torch.long)},
         r"^CartoLogger.record: segment_ids must be \(B, T\) like labels, \(2, 6\); got \(2, 5\)$"),
        ({"segment_ids": torch.zeros(6, dtype=torch.long)},
         r"segment_ids must be \(B, T\) like labels, \(2, 6\); got \(6,\)$"),
        ({"segment_ids": torch.zeros(2, 6)}, r"segment_ids must hold integer sample ids; got torch.float32$"),
        ({"segment_ids": torch.zeros(2, 6, dtype=torch.long), "max_docs_per_row": 0},
         r"max_docs_per_row must be >= 1; got 0$"),
        ({"segment_ids": torch.zeros(2, 6, dtype=torch.long), "keep": [True]}, r"keep has 1 rows but the batch has 2$"),
    ],
)
def test_bad_segment_arguments_are_one_line_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    logits, labels = torch.zeros(2, 6, V), torch.zeros(2, 6, dtype=torch.long)
    with CartoLogger(tmp_path) as log, pytest.raises(OptionError, match=message):
        log.record(None, epoch=0, step=0, logits=logits, labels=labels, **kwargs)


def test_packed_mode_refuses_what_it_cannot_log(tmp_path: Path) -> None:
    segments = torch.zeros(1, 3, dtype=torch.long)
    logits, labels = torch.zeros(1, 3, V), torch.zeros(1, 3, dtype=torch.long)
    with CartoLogger(tmp_path / "a") as log:
        with pytest.raises(OptionError, match="the sample ids come from segment_ids; pass None as sample_ids$"):
            log.record([0], epoch=0, step=0, logits=logits, labels=labels, segment_ids=segments)
        with pytest.raises(OptionError, match=r"segment_ids= needs logits= \(B, T, V\) and labels= \(B, T\)$"):
            log.record(None, epoch=0, step=0, loss=[1.0], correct=[True], segment_ids=segments)
    with CartoLogger(tmp_path / "b", token_losses=True) as log, pytest.raises(
            OptionError, match=r"does not log per-token losses; use CartoLogger\(token_losses=False\)"):
        log.record(None, epoch=0, step=0, logits=logits, labels=labels, segment_ids=segments)


def test_carto_score_reads_a_packed_log(tmp_path: Path) -> None:
    """Three epochs of 12 documents packed 4 to a row, shuffled into other rows each epoch, and document
    12 split over the ends of two rows every epoch: scored per document, each seen once an epoch, 12
    twice (a presentation per piece)."""
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    step = 0
    with CartoLogger(tmp_path / "logs") as log:
        for epoch in range(3):
            order = rng.permutation(12)
            for rows in (order[:8].reshape(2, 4), order[8:].reshape(1, 4)):
                layout = [[(int(i), 5, "all") for i in row] + [(12, 2, "all")] * (len(rows) == 2) for row in rows]
                logits, labels, segments, _ = packed_batch(g, layout, T=22)
                log.record(None, epoch=epoch, step=step, logits=logits, labels=labels, segment_ids=segments)
                step += 1
    result = CliRunner().invoke(app, ["score", str(tmp_path / "logs"), "--out", str(tmp_path / "scores.parquet")])
    assert result.exit_code == 0, result.output
    scores = pl.read_parquet(tmp_path / "scores.parquet").sort("sample_id")
    assert scores["sample_id"].to_list() == list(range(13))
    assert scores["n_seen"].to_list() == [3] * 12 + [6]
    parts = read_log(tmp_path / "logs")
    early = parts.filter(pl.col("epoch") < 2).group_by("sample_id").agg(pl.col("loss").cast(pl.Float64).mean())
    joined = scores.join(early, on="sample_id")
    assert np.allclose(joined["difficulty"], joined["loss"], atol=1e-6)
