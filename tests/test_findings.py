"""Findings: memorized strings, every copy of them, public or private (`carto score --data`).

A hand-made world whose answer is worked out on paper (`world`): 24 samples of 17 tokens, a secret
planted in five of them (only one of which shows, in its own log, that the model learned it: the
others are copies learned from it), a public string in two (it also occurs in the reference), and a
sample whose memorized run is shorter than --min-span (its string takes the tokens before it).
Then `carto score --data`, `findings`, `prune`, `mask` and `weights` on it; the rules one at a
time; and a small world end to end, where a GRU trained with `CartoLogger()` memorizes secrets and
`carto score --data` + `carto prune` at their defaults remove their copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_parts
from typer.testing import CliRunner

from carto_cli.cli import app, score_command
from carto_cli.engines import findings as findings_pass
from carto_cli.export import manifests
from carto_cli.export.masks import IGNORE_INDEX, LossMask, mask_spans
from carto_cli.io import tokens
from carto_cli.score import findings, match

runner = CliRunner()
SKETCH_SCHEMA = {"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
                 "correct": pl.Boolean, "n_tokens": pl.Int32, "top_pos": pl.List(pl.UInt16),
                 "top_loss": pl.List(pl.Float16), "hit_runs": pl.List(pl.UInt16)}

N, ROW = 24, 17  # samples; tokens a row (16 targets: logged position j is the row's token 1 + j)
SECRET = [900, 901, 902, 903, 904, 905]
SECRET_AT = {2: 3, 5: 8, 7: 1, 11: 5, 13: 10}  # carrier -> the row index where the secret starts
PUBLIC = [800, 801, 802, 803, 804, 805]
PUBLIC_AT = {9: 2, 10: 4}
# top_pos, top_loss (k = 6), hit_runs (r = 2) of a sample with no evidence
QUIET = ([0, 1, 8, 9, 10, 11], [0.5, 0.4, 0.3, 0.3, 0.2, 0.2], [0, 0, 0, 0])
# sample -> (early sketch, late runs): what the log says about the samples that are not quiet
SKETCHES = {
    # the secret's source: every secret token among its largest early losses (2 nats each), then a
    # run of hits over it: positions 2..7 (row 3..8): extractable 12
    2: (([2, 3, 4, 5, 6, 7], [2.0] * 6), [2, 6, 12, 1]),
    # the public string's source: positions 1..6, 4 nats each: extractable 24
    9: (([1, 2, 3, 4, 5, 6], [4.0] * 6), [0, 10, 0, 0]),
    # evidence 12 in a run of 2 positions (row 5..6), shorter than --min-span 6: its string is the row's
    # tokens 1..6, the 4 before the run and the run, found in its own row only
    15: (([4, 9, 10, 11, 12, 13], [12.0, 0.1, 0.1, 0.1, 0.1, 0.1]), [4, 2, 0, 0]),
    # the secret's other copies: their runs reproduce it, their early losses lie elsewhere (score 0)
    **{s: (QUIET[:2], [at - 1, 6, 0, 0]) for s, at in SECRET_AT.items() if s != 2},
}


def world_rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 50, size=(N, ROW))
    for s, at in SECRET_AT.items():
        rows[s, at:at + 6] = SECRET
    for s, at in PUBLIC_AT.items():
        rows[s, at:at + 6] = PUBLIC
    return rows


def write_dataset(path: Path, rows: np.ndarray, **extra: list) -> Path:
    pq.write_table(pa.table({"input_ids": pa.array(rows.tolist(), type=pa.list_(pa.int64())), **extra}), path)
    return path


@pytest.fixture
def world(tmp_path: Path) -> dict:
    rows = world_rows()
    log_rows = []
    for s in range(N):
        (pos, loss), runs = SKETCHES.get(s, (QUIET[:2], QUIET[2]))
        for epoch, step in ((0, s), (1, 100 + s)):
            early = epoch == 0
            log_rows.append({"sample_id": s, "epoch": epoch, "step": step, "loss": 1.0, "correct": True,
                             "n_tokens": ROW - 1, "top_pos": pos if early else QUIET[0],
                             "top_loss": loss if early else [0.1] * 6,
                             "hit_runs": QUIET[2] if early else runs})
    write_parts(tmp_path / "logs", log_rows, schema=SKETCH_SCHEMA)
    reference = np.random.default_rng(1).integers(0, 50, size=(4, ROW))
    reference[2, 5:11] = PUBLIC
    return {"logs": tmp_path / "logs", "data": write_dataset(tmp_path / "train.parquet", rows),
            "reference": write_dataset(tmp_path / "val.parquet", reference), "rows": rows, "dir": tmp_path}


def score(world: dict, *extra: str) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    out, found = world["dir"] / "scores.parquet", world["dir"] / "findings.parquet"
    result = runner.invoke(app, ["score", str(world["logs"]), "--early-epochs", "1", "--out", str(out),
                                 "--findings", str(found), "--data", str(world["data"]), "--min-span", "6", *extra])
    assert result.exit_code == 0, result.output
    return pl.read_parquet(out), pl.read_parquet(found), result.output


# ------------------------------------------------------------------ the hand-made world


def test_the_secret_is_one_private_finding_with_every_copy(world: dict) -> None:
    scores, found, output = score(world, "--reference", str(world["reference"]))
    by_text = {tuple(row["tokens"]): row for row in found.iter_rows(named=True)}
    secret, public = by_text[tuple(SECRET)], by_text[tuple(PUBLIC)]
    short = by_text[tuple(world["rows"][15, 1:7])]  # sample 15's run, with the 4 tokens before it
    assert len(by_text) == 3 and not short["public"] and short["carriers"] == 1 and short["evidence"] == 12.0
    assert not secret["public"] and secret["evidence"] == 12.0 and secret["sources"] == 1
    assert secret["carriers"] == secret["copies"] == 5
    assert sorted((c["sample_id"], c["start"], c["length"]) for c in secret["copies_at"]) == \
        sorted((s, at, 6) for s, at in SECRET_AT.items())
    assert public["public"] and public["reference_copies"] == 1 and public["carriers"] == 2
    assert secret["first_step"] == 2 and secret["last_step"] == 113  # sample 2 at step 2; 13 at 113
    # memorization: the strongest private finding carried; the sample's own value moves to `signal`
    m = dict(zip(scores["sample_id"], scores["memorization"]))
    assert {s for s, v in m.items() if v > 0} == {*SECRET_AT, 15}
    assert all(m[s] == 12.0 for s in (*SECRET_AT, 15))
    signal = dict(zip(scores["sample_id"], scores["signal"]))
    assert signal[9] == 24.0 and m[9] == 0.0 and signal[15] == 12.0
    assert signal[5] < findings.DEFAULT_MIN_EVIDENCE  # a copy learned from the others: found all the same
    assert set(scores.filter(pl.col("finding").is_not_null())["sample_id"]) == {*SECRET_AT, 15}
    # high memorization is carrying a private finding: every carrier is in one of the two high quadrants
    high = {"hotspot-memorized", "noisy-outlier"}
    assert set(scores.filter(pl.col("quadrant").is_in(high))["sample_id"]) == {*SECRET_AT, 15}
    assert "findings: 3 memorized string(s) from 3 sample(s) with evidence: 2 private, 1 public; 6 sample(s)" \
        in output
    assert "label shift of 1 (measured)" in output


def test_without_a_reference_every_finding_is_private(world: dict) -> None:
    scores, found, _ = score(world)
    assert not found["public"].any() and found.height == 3
    assert set(scores.filter(pl.col("memorization") > 0)["sample_id"]) == {*SECRET_AT, *PUBLIC_AT, 15}


def test_prune_mask_and_weights_act_on_every_copy_of_the_private_finding(world: dict) -> None:
    score(world, "--reference", str(world["reference"]))
    d = world["dir"]
    result = runner.invoke(app, ["prune", "--scores", str(d / "scores.parquet"), "--out", str(d / "m.parquet")])
    assert result.exit_code == 0, result.output
    assert "removing 6 of 24 samples (25.0%): every sample that carries a private finding" in result.output
    manifest = pl.read_parquet(d / "m.parquet")
    assert set(manifest.filter(~pl.col("keep"))["sample_id"]) == {*SECRET_AT, 15}

    result = runner.invoke(app, ["mask", "--findings", str(d / "findings.parquet"), "--out", str(d / "mask.parquet")])
    assert result.exit_code == 0, result.output
    assert "6 span(s), 36 token(s) in 6 sample(s)" in result.output
    spans = pl.read_parquet(d / "mask.parquet")
    assert sorted(spans.select("sample_id", "start", "length").iter_rows()) == \
        sorted([(s, at, 6) for s, at in SECRET_AT.items()] + [(15, 1, 6)])

    result = runner.invoke(app, ["weights", "--scores", str(d / "scores.parquet"), "--out", str(d / "w.parquet")])
    assert result.exit_code == 0, result.output
    weights = pl.read_parquet(d / "w.parquet")
    assert weights.filter(pl.col("sample_id").is_in(list(SECRET_AT)))["weight"].max() <= 1.0


def test_findings_lists_the_strings(world: dict) -> None:
    score(world, "--reference", str(world["reference"]))
    result = runner.invoke(app, ["findings", "--findings", str(world["dir"] / "findings.parquet"), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert (listed["findings"], listed["private"], listed["public"], listed["carriers_of_private"]) == (3, 2, 1, 6)
    assert [row["public"] for row in listed["listed"]] == [False, False, True]  # private first
    result = runner.invoke(app, ["findings", "--findings", str(world["dir"] / "findings.parquet")])
    assert "3 memorized string(s): 2 private in 6 sample(s), 1 public (found in the reference)" in result.output


def test_prune_with_frac_takes_whole_findings_strongest_first() -> None:
    # findings 0 (evidence 9, 3 carriers), 1 (evidence 5, 2 carriers), 2 (evidence 3, 4 carriers)
    finding = [0, 0, 0, 1, 1, 2, 2, 2, 2] + [None] * 11
    evidence = [9.0] * 3 + [5.0] * 2 + [3.0] * 4 + [0.0] * 11
    scores = pl.DataFrame({"sample_id": range(20), "memorization": evidence, "finding": finding,
                           "forget_events": [0] * 20, "difficulty": [1.0] * 20, "quadrant": ["x"] * 20})
    pruned = {frac: set(manifests.findings_manifest(scores, frac=frac).filter(~pl.col("keep"))["sample_id"])
              for frac in (0.1, 0.15, 0.25, 0.5)}
    assert pruned[0.1] == {3, 4}  # 2 samples: finding 0 needs 3 and is kept whole; finding 1 fits
    assert pruned[0.15] == {0, 1, 2}  # 3: finding 0 whole
    assert pruned[0.25] == {0, 1, 2, 3, 4}  # 5: findings 0 and 1
    assert pruned[0.5] == set(range(9))
    assert manifests.findings_manifest(scores).filter(~pl.col("keep")).height == 9


def test_the_bad_inputs_are_one_line_errors(world: dict, tmp_path: Path) -> None:
    d = world["dir"]
    base = ["score", str(world["logs"]), "--early-epochs", "1", "--out", str(d / "s.parquet")]
    cases = {
        "--reference needs --data": [*base, "--reference", str(world["reference"])],
        "is also --out": [*base, "--data", str(world["data"]), "--findings", str(d / "s.parquet")],
        "has no input_ids column; pass --tokenizer": [*base, "--data", str(write_text(tmp_path))],
        "not a tokenizer.json file": [*base, "--data", str(write_text(tmp_path)), "--tokenizer",
                                      str(write_text(tmp_path))],
        "drop --memorization forgets": [*base, "--data", str(world["data"]), "--memorization", "forgets"],
        "does not combine with --update": [*base, "--data", str(world["data"]), "--update"],
    }
    for message, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.output, (message, result.output)
        assert "Traceback" not in result.output
    # a dataset that is not the one the log was written from: rows of another length
    other = write_dataset(tmp_path / "other.parquet", np.random.default_rng(9).integers(0, 50, size=(N, ROW + 3)))
    result = runner.invoke(app, [*base, "--data", str(other), "--min-span", "6"])
    assert result.exit_code == 1 and "do not have the number of targets the log counted" in result.output
    # too few rows, by row order
    short = write_dataset(tmp_path / "short.parquet", world_rows()[:5])
    result = runner.invoke(app, [*base, "--data", str(short), "--min-span", "6"])
    assert result.exit_code == 1 and "are not in it" in result.output


def write_text(tmp_path: Path) -> Path:
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(N)))
    return path


def test_the_label_shift_is_measured_declared_or_given(world: dict) -> None:
    data = tokens.open_tokens(world["data"])
    ids = np.array([2, 9])
    assert findings_pass.infer_label_shift(data, ids, np.array([16.0, 16.0])) == 1
    assert findings_pass.infer_label_shift(data, ids, np.array([17.0, 17.0])) == 0
    with pytest.raises(Exception, match="do not have the number of targets the log counted"):
        findings_pass.infer_label_shift(data, ids, np.array([9.0, 9.0]))
    # given: --label-shift 0 reads every span one token early, and the secret's string is not found
    _, found, output = score(world, "--label-shift", "0")
    assert tuple(SECRET) not in {tuple(t) for t in found["tokens"]}
    assert "(--label-shift)" in output


def test_labels_move_the_first_target_past_a_masked_prompt(tmp_path: Path) -> None:
    rows = np.arange(40).reshape(4, 10)
    labels = rows.copy()
    labels[1, :4] = -100  # row 1's prompt (tokens 0..3) has no target
    path = write_dataset(tmp_path / "sft.parquet", rows, labels=pa.array(labels.tolist(), type=pa.list_(pa.int64())))
    got = tokens.open_tokens(path).rows(np.array([0, 1]))
    assert got.first_target.tolist() == [1, 4]


# ------------------------------------------------------------------ the rules, one at a time


def test_a_core_is_widened_inside_its_run() -> None:
    assert findings.widen(3, 5, 1, 9, 6) == (1, 7)
    assert findings.widen(3, 5, 3, 20, 6) == (3, 9)  # no room on the left: all on the right
    assert findings.widen(3, 5, 3, 5, 6) == (3, 5)  # a run shorter than asked stays as it is
    assert findings.widen(0, 10, 0, 12, 6) == (0, 10)  # long enough already


def test_a_common_string_does_not_chain_rare_ones_together_and_pieces_join_their_whole() -> None:
    """Two secrets (rows 0-9 at 10, rows 10-19 at 30) and indentation in every row at 0: sharing most
    of each secret's rows, it would join them into one finding if overlap were measured against the
    smaller set, or if a weaker string could take in the stronger ones it overlaps. Pattern 3 is
    secret 0 seen through another run (9 of its 10 rows); pattern 4, weaker, occurs in half of
    secret 0's rows overlapping it: a piece of it; pattern 5 too, but stronger: not a piece;
    pattern 6 lies in rows of the indentation but away from it."""
    rows = {0: range(10), 1: range(10, 20), 2: range(40), 3: range(1, 10), 4: range(5, 10), 5: range(3),
            6: range(20, 23)}
    starts = {0: 10, 1: 30, 2: 0, 3: 10, 4: 8, 5: 8, 6: 40}
    lengths = np.array([8, 8, 12, 8, 8, 8, 8])
    evidence = np.array([20.0, 20.0, 11.0, 15.0, 12.0, 25.0, 12.0])
    hits = pl.DataFrame([{"pattern": p, "sample_id": r, "start": starts[p]} for p, rs in rows.items() for r in rs])
    labels = findings.group(lengths, evidence, hits, overlap=0.5)
    assert labels[0] != labels[1] and labels[2] not in (labels[0], labels[1])
    assert labels[3] == labels[0] and labels[4] == labels[0]  # the same rows; a weaker piece of it
    assert len({labels[0], labels[1], labels[2], labels[5], labels[6]}) == 5  # stronger; away from the rest


def test_a_loss_mask_drops_the_targets_of_the_masked_tokens() -> None:
    mask = LossMask(pl.DataFrame({"sample_id": [7, 7], "start": [2, 8], "length": [3, 1]}))
    assert mask.tokens(7).tolist() == [2, 3, 4, 8] and len(mask.tokens(1)) == 0
    labels = np.arange(10)
    # a causal LM's labels, laid out like the inputs: labels[t] targets token t
    assert np.flatnonzero(mask.apply(7, labels, target_offset=0) == IGNORE_INDEX).tolist() == [2, 3, 4, 8]
    # a plain loop's y = row[1:]: y[t - 1] targets token t; and 2 pad positions before the row
    assert np.flatnonzero(mask.apply(7, labels, target_offset=1) == IGNORE_INDEX).tolist() == [1, 2, 3, 7]
    assert np.flatnonzero(mask.apply(7, labels, target_offset=0, row_offset=2) == IGNORE_INDEX).tolist() == \
        [4, 5, 6]  # token 8 would be position 10: past the end
    assert labels.tolist() == list(range(10))  # the input is not modified
    torch = pytest.importorskip("torch")
    masked = mask.apply(7, torch.arange(10), target_offset=0)
    assert torch.nonzero(masked == IGNORE_INDEX).flatten().tolist() == [2, 3, 4, 8]


def test_mask_spans_merge_overlapping_copies_and_leave_public_ones() -> None:
    frame = pl.DataFrame({"finding": [0, 1, 2], "evidence": [5.0, 9.0, 7.0], "public": [False, False, True],
                          "copies_at": [[{"sample_id": 1, "start": 2, "length": 4}],
                                        [{"sample_id": 1, "start": 5, "length": 3},
                                         {"sample_id": 2, "start": 0, "length": 2}],
                                        [{"sample_id": 3, "start": 0, "length": 5}]]})
    spans = mask_spans(frame)
    assert spans.rows() == [(1, 2, 6, 1), (2, 0, 2, 1)]  # [2, 6) and [5, 8) merged, named by the stronger
    assert mask_spans(frame, include_public=True)["sample_id"].to_list() == [1, 2, 3]


def test_the_clis_defaults_are_the_cores() -> None:
    assert score_command.DEFAULT_MIN_EVIDENCE == findings.DEFAULT_MIN_EVIDENCE
    assert score_command.DEFAULT_MIN_SPAN == findings.DEFAULT_MIN_LENGTH


def test_search_finds_every_copy_across_batches(world: dict) -> None:
    data = tokens.open_tokens(world["data"])
    patterns = match.Patterns([np.array(SECRET), np.array(PUBLIC)], anchor=4)
    one = findings.search(patterns, data)
    small = tokens.open_tokens(world["data"])
    small_batches = list(small.batches(batch_rows=5))
    assert len(small_batches) == 5 and [b.sample_ids[0] for b in small_batches] == [0, 5, 10, 15, 20]
    assert sorted(one.rows()) == sorted([(0, s, at) for s, at in SECRET_AT.items()]
                                        + [(1, s, at) for s, at in PUBLIC_AT.items()])


# ------------------------------------------------------------------ a small world, end to end


def test_defaults_find_every_copy_of_what_the_model_memorized(tmp_path: Path) -> None:
    """test_extractable's small world (a Markov language, a GRU, 8 secrets of 6 words in 10
    samples each, CartoLogger() at its defaults), held-out text of the same language as the
    reference: `carto score --data --reference` and `carto prune` at their defaults remove at least
    80% of the carriers of every secret the model gives back, at least 80% of what they remove is a
    carrier, and `carto weights` never weights a carrier above 1."""
    torch = pytest.importorskip("torch")
    from test_extractable import small_world, train_small_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small: thread hand-offs cost more than they save
    try:
        data, keys, secrets, carriers = small_world(seed=1)
        held_out, _, _, _ = small_world(seed=1, n=1400)
        reference = held_out[1200:]  # the same language, never trained on, no secret
        extracted = train_small_world(tmp_path / "logs", data, keys, secrets)
    finally:
        torch.set_num_threads(threads)
    memorized = set(carriers[np.flatnonzero(extracted)].ravel().tolist())
    every_carrier = set(carriers.ravel().tolist())

    train = write_dataset(tmp_path / "train.parquet", data)
    val = write_dataset(tmp_path / "val.parquet", reference)
    scores, found = tmp_path / "scores.parquet", tmp_path / "findings.parquet"
    result = runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", str(scores), "--data", str(train),
                                 "--reference", str(val), "--findings", str(found)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["prune", "--scores", str(scores), "--out", str(tmp_path / "manifest.parquet")])
    assert result.exit_code == 0, result.output
    pruned = set(pl.read_parquet(tmp_path / "manifest.parquet").filter(~pl.col("keep"))["sample_id"].to_list())
    assert len(memorized & pruned) >= 0.8 * len(memorized), (len(memorized & pruned), len(memorized))
    assert len(pruned & every_carrier) >= 0.8 * len(pruned), (len(pruned & every_carrier), len(pruned))
    result = runner.invoke(app, ["weights", "--scores", str(scores), "--out", str(tmp_path / "w.parquet")])
    assert result.exit_code == 0, result.output
    weights = pl.read_parquet(tmp_path / "w.parquet")
    assert weights.filter(pl.col("sample_id").is_in(sorted(memorized)))["weight"].max() <= 1.0


def test_the_ray_engine_searches_in_its_tasks_and_finds_the_same(world: dict) -> None:
    ray = pytest.importorskip("ray")
    local_scores, local_found, _ = score(world, "--reference", str(world["reference"]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        data = tokens.open_tokens(world["data"])
        assert [s.first_row for s in data.shards(rows_per_shard=1)] == [0]  # one row group: one shard
        remote_scores, remote_found, output = score(world, "--reference", str(world["reference"]), "--engine", "ray")
    finally:
        ray.shutdown()
    assert remote_found.drop("copies_at").equals(local_found.drop("copies_at"))
    assert remote_scores.sort("sample_id").equals(local_scores.sort("sample_id"))


def test_a_dataset_read_in_shards_gives_every_row_its_id(tmp_path: Path) -> None:
    rows = np.arange(60).reshape(12, 5)
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(rows.tolist(), type=pa.list_(pa.int64()))}), path,
                   row_group_size=4)
    data = tokens.open_tokens(path)
    shards = data.shards(rows_per_shard=5)
    assert [(s.row_groups, s.first_row) for s in shards] == [((0, 1), 0), ((2,), 8)]
    ids = [int(i) for s in shards for batch in data.batches(shard=s) for i in batch.sample_ids]
    assert ids == list(range(12))
    first = [batch.row(0).tolist() for s in shards for batch in data.batches(shard=s)]
    assert first[0] == rows[0].tolist() and first[-1] == rows[8].tolist()


def test_indexed_dataset_masks_labels_for_lightning_and_plain_loops(tmp_path: Path) -> None:
    """IndexedDataset(mask=): a dict item's labels get -100 on the masked tokens (a copy: the
    dataset is untouched); an item without labels is a one-line error that says what to do."""
    pytest.importorskip("torch")
    from carto_cli.errors import OptionError
    from carto_cli.integrations.distributed import IndexedDataset

    mask = LossMask(pl.DataFrame({"sample_id": [1], "start": [2], "length": [2]}))
    items = [{"input_ids": list(range(6)), "labels": list(range(6))} for _ in range(3)]
    indexed = IndexedDataset(items, mask=mask)
    sample_id, item = indexed[1]
    assert sample_id == 1 and list(item["labels"]) == [0, 1, IGNORE_INDEX, IGNORE_INDEX, 4, 5]
    assert list(indexed[0][1]["labels"]) == list(range(6)) and items[1]["labels"] == list(range(6))
    with pytest.raises(OptionError, match="mask the targets in the training step"):
        IndexedDataset([[1, 2, 3]], mask=mask)[0]


def test_cartocallbacks_declared_shift_maps_logged_positions_to_the_rows(tmp_path: Path) -> None:
    """CartoCallback(label_shift=1) writes the shift into every part, and `carto score --data` maps
    positions by it (no measurement, no note): its logged positions land on the row's tokens."""
    pytest.importorskip("lightning")
    from test_integration_lightning import TinyLM, loader, tokens, trainer

    from carto_cli.integrations.lightning import CartoCallback
    from carto_cli.io.logs import open_logs

    trainer([CartoCallback(log_dir=tmp_path / "logs", label_shift=1)], epochs=3).fit(TinyLM(), loader())
    assert findings_pass.declared_label_shift(open_logs([tmp_path / "logs"])) == 1
    data = write_dataset(tmp_path / "rows.parquet", tokens().numpy())
    result = runner.invoke(app, ["score", str(tmp_path / "logs"), "--early-epochs", "1", "--data", str(data),
                                 "--min-evidence", "0", "--min-span", "2", "--out", str(tmp_path / "s.parquet"),
                                 "--findings", str(tmp_path / "f.parquet")])
    assert result.exit_code == 0, result.output
    assert "label shift" not in result.output  # declared by the log: nothing measured, nothing to note
    found = pl.read_parquet(tmp_path / "f.parquet")
    rows = tokens().numpy()
    assert found.height
    for finding in found.iter_rows(named=True):  # every copy holds one of the finding's strings, its text too
        tokens_ = finding["tokens"]
        held = [rows[c["sample_id"], c["start"]:c["start"] + c["length"]].tolist() for c in finding["copies_at"]]
        assert any(any(h[i:i + len(tokens_)] == tokens_ for i in range(len(h))) for h in held)


def test_a_trainer_output_directory_is_scored_without_carto_s_own_files(world: dict, tmp_path: Path) -> None:
    """`carto score OUTPUT_DIR` (the Trainer's output directory, the logs in OUTPUT_DIR/carto_logs) once
    carto's own outputs are in it: they are left out with a note, not read as parts; a directory
    with no part but carto's outputs names where the logs are; a dataset passed as a log is named."""
    import shutil

    out_dir = tmp_path / "out"
    shutil.copytree(world["logs"], out_dir / "carto_logs")
    first = runner.invoke(app, ["score", str(out_dir / "carto_logs"), "--early-epochs", "1",
                                "--out", str(out_dir / "scores.parquet")])
    assert first.exit_code == 0, first.output
    assert runner.invoke(app, ["prune", "--frac", "0.1", "--scores", str(out_dir / "scores.parquet"),
                               "--out", str(out_dir / "manifest.parquet")]).exit_code == 0
    again = runner.invoke(app, ["score", str(out_dir), "--early-epochs", "1", "--out", str(tmp_path / "s2.parquet")])
    assert again.exit_code == 0, again.output
    assert "left out carto's own files in the log directory: manifest.parquet (manifest), scores.parquet " \
           "(scores)" in again.output
    assert pl.read_parquet(tmp_path / "s2.parquet").height == N
    shutil.rmtree(out_dir / "carto_logs")
    (out_dir / "logs").mkdir()
    result = runner.invoke(app, ["score", str(out_dir), "--out", str(tmp_path / "s3.parquet")])
    assert result.exit_code == 1
    assert f"only carto's own outputs (manifest.parquet, scores.parquet), no log part; the logs are in " \
           f"{out_dir / 'logs'}" in result.output
    result = runner.invoke(app, ["score", str(out_dir / "scores.parquet"), "--out", str(tmp_path / "s4.parquet")])
    assert result.exit_code == 1 and "a carto scores file, not a log part" in result.output
    result = runner.invoke(app, ["score", str(write_text(tmp_path)), "--out", str(tmp_path / "s5.parquet")])
    assert result.exit_code == 1 and "texts.jsonl: a JSON Lines file, not a log part" in result.output


def test_a_log_of_several_runs_is_searched_one_run_at_a_time(world: dict, tmp_path: Path) -> None:
    import shutil

    for run in ("seed-a", "seed-b"):
        for part in sorted(world["logs"].glob("*.parquet")):
            table = pq.read_table(part)
            meta = {**(table.schema.metadata or {}), b"carto.run_id": run.encode(),
                    b"carto.attempt": f"{run}-1".encode(), b"carto.attempt_started_ns": b"1"}
            (tmp_path / run).mkdir(exist_ok=True)
            pq.write_table(table.replace_schema_metadata(meta), tmp_path / run / part.name)
    both = tmp_path / "both"
    both.mkdir()
    for run in ("seed-a", "seed-b"):
        shutil.copytree(tmp_path / run, both / run)
    base = ["score", str(both), "--early-epochs", "1", "--data", str(world["data"]), "--min-span", "6",
            "--out", str(tmp_path / "s.parquet"), "--findings", str(tmp_path / "f.parquet")]
    result = runner.invoke(app, base)
    assert result.exit_code == 1 and "one run at a time and this log holds 2; pass --run ID" in result.output
    result = runner.invoke(app, [*base, "--run", "seed-a"])
    assert result.exit_code == 0, result.output
    assert tuple(SECRET) in {tuple(t) for t in pl.read_parquet(tmp_path / "f.parquet")["tokens"]}
