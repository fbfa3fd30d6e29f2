"""The default memorization signal, `extractable`, and the sketch the shim logs for it.

- the sketch (`carto_cli.log.sketch`) against a plain-Python reading of its definition;
- the signal on a hand-made log whose answer is worked out on paper;
- `auto`: the sketch decides, old logs keep scoring by forget events, `--update` says why not;
- end to end in a small world unlike the experiment's (a word-level Markov language, a GRU, secret
  key tokens): `CartoLogger()`, `carto score` and `carto prune --frac 0.1` at their defaults
  prune most samples whose secret the model gives back.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_hand_scores, hand_rows, write_parts
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from carto_cli import score_logs
from carto_cli.cli import app

torch = pytest.importorskip("torch")
from carto_cli.log import sketch  # noqa: E402  (needs torch only at call time, but its tests need it)

runner = CliRunner()
SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"

# ------------------------------------------------------------------ the sketch


def naive_runs(hits: list[bool], r: int) -> list[int]:
    runs, t = [], 0
    while t < len(hits):
        if hits[t]:
            start = t
            while t < len(hits) and hits[t]:
                t += 1
            runs.append((start, t - start))
        else:
            t += 1
    runs = sorted(runs, key=lambda run: (-run[1], run[0]))[:r]
    runs += [(0, 0)] * (r - len(runs))
    return [x for run in runs for x in run]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_sketch_matches_its_definition(data) -> None:
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 24))
    k, r = data.draw(st.integers(1, 10)), data.draw(st.integers(1, 6))
    flags = st.lists(st.booleans(), min_size=B * T, max_size=B * T)
    hit = torch.tensor(data.draw(flags)).view(B, T)
    valid = torch.tensor(data.draw(flags)).view(B, T)
    # distinct losses (ties in a top-k are ordered by position, tested below)
    loss = torch.randperm(B * T, generator=torch.Generator().manual_seed(B * T + k)).view(B, T).float() / 8

    runs = sketch.hit_runs(torch, hit, valid, r)
    positions, losses = sketch.top_losses(torch, loss, valid, k)
    assert runs.shape == (B, 2 * r) and positions.shape == losses.shape == (B, k)
    for b in range(B):
        assert runs[b].tolist() == naive_runs((hit[b] & valid[b]).tolist(), r)
        ranked = sorted(((-float(loss[b, t]), t) for t in range(T) if valid[b, t]))[:k]
        for i in range(k):
            if i < len(ranked):
                assert int(positions[b, i]) == ranked[i][1]
                assert math.isclose(float(losses[b, i]), -ranked[i][0], rel_tol=1e-3)
            else:  # fewer targets than k: padded with (0, NaN)
                assert int(positions[b, i]) == 0 and math.isnan(float(losses[b, i]))


def test_sketch_ties_and_edges() -> None:
    loss = torch.tensor([[1.0, 2.0, 2.0, 0.5]])
    valid = torch.tensor([[True, True, True, False]])
    positions, losses = sketch.top_losses(torch, loss, valid, 2)
    assert positions.tolist() == [[1, 2]]  # equal losses: the earlier position first
    hit = torch.tensor([[True, False, True, True, False, True, True]])
    assert sketch.hit_runs(torch, hit, torch.ones_like(hit), 3).tolist() == [[2, 2, 5, 2, 0, 1]]
    # an ignored position breaks a run
    valid = torch.tensor([[True, True, True, False, True, True, True]])
    assert sketch.hit_runs(torch, torch.ones_like(hit), valid, 2).tolist() == [[0, 3, 4, 3]]


# ------------------------------------------------------------------ the signal, by hand

SKETCH_SCHEMA = {"sample_id": pl.Int64, "epoch": pl.Int32, "step": pl.Int64, "loss": pl.Float32,
                 "correct": pl.Boolean, "top_pos": pl.List(pl.UInt16), "top_loss": pl.List(pl.Float16),
                 "hit_runs": pl.List(pl.UInt16)}


def sketch_rows() -> list[dict]:
    """k = 2, r = 2, early epochs 0 and 1. Expected values in EXPECTED."""
    def row(sid, epoch, step, pos, loss, runs):
        return {"sample_id": sid, "epoch": epoch, "step": step, "loss": 1.0, "correct": True,
                "top_pos": pos, "top_loss": loss, "hit_runs": runs}
    nan = float("nan")
    return [
        # sample 1: early_5 = (3 + 2) / 2 = 2.5, early_2 = 1 / 2 = 0.5, early_7 = 1.5 / 2 = 0.75.
        # Its last presentation (step 40) has runs 1..2 (0.5) and 6..8 (0.75): 0.75. The earlier
        # late run 4..7 (2.5 + 0.75) does not count.
        row(1, 0, 0, [5, 2], [3.0, 1.0], [0, 0, 0, 0]),
        row(1, 1, 10, [5, 7], [2.0, 1.5], [0, 0, 0, 0]),
        row(1, 2, 20, [0, 1], [0.1, 0.1], [4, 4, 0, 0]),
        row(1, 3, 40, [0, 1], [0.1, 0.1], [1, 2, 6, 3]),
        # sample 2: no late presentation: null
        row(2, 0, 1, [0, 1], [2.0, 1.0], [0, 0, 0, 0]),
        # sample 3: a late presentation without hits: 0
        row(3, 0, 2, [3, 4], [2.0, 1.0], [3, 2, 0, 0]),
        row(3, 2, 22, [3, 4], [0.5, 0.5], [0, 0, 0, 0]),
        # sample 4: one target (the sketch padded with NaN); the run covers it: early_0 = 4.0
        row(4, 0, 3, [0, 0], [4.0, nan], [0, 0, 0, 0]),
        row(4, 1, 13, [0, 0], [4.0, nan], [0, 0, 0, 0]),
        row(4, 3, 43, [0, 0], [0.0, nan], [0, 1, 0, 0]),
    ]


EXPECTED = {1: 0.75, 2: None, 3: 0.0, 4: 4.0}


def test_extractable_by_hand(tmp_path: Path) -> None:
    write_parts(tmp_path / "logs", sketch_rows(), schema=SKETCH_SCHEMA)
    scores = score_logs(tmp_path / "logs", memorization="extractable")
    assert dict(scores.select("sample_id", "memorization").iter_rows()) == EXPECTED
    # the default (auto) picks it, because the log has the sketch
    assert score_logs(tmp_path / "logs")["memorization"].to_list() == list(EXPECTED.values())


def tied_rows() -> list[dict]:
    """Sample 5, drawn twice at its last step (sampling with replacement): two late presentations
    at one (step, epoch) with different runs. early_3 = 2.0 and early_6 = 1.0; the runs [3, 1, 0, 0]
    cover position 3 (2.0), [2, 0, 6, 1] position 6 (1.0): the tie rule takes the runs that compare
    largest, [3, 1, 0, 0], so 2.0, in whichever order the rows come."""
    def row(epoch, step, runs):
        return {"sample_id": 5, "epoch": epoch, "step": step, "loss": 1.0, "correct": True,
                "top_pos": [3, 6], "top_loss": [2.0, 1.0], "hit_runs": runs}
    return [row(0, 5, [0, 0, 0, 0]), row(2, 45, [3, 1, 0, 0]), row(2, 45, [2, 0, 6, 1])]


@pytest.mark.parametrize("built", ["compiled", "numpy", "definition"])
def test_extractable_does_not_depend_on_file_order(tmp_path: Path, built: str, monkeypatch) -> None:
    """The same log in other file and row orders, with a sample whose last presentation is tied
    on (step, epoch) (`tied_rows`): the same scores, the tie decided by the definition's rule."""
    from carto_cli.score import extract

    if built == "definition":
        monkeypatch.setattr(extract, "extractable", lambda *a, **k: None)  # the caller runs the definition
    else:
        use_loops(built, monkeypatch)
    monkeypatch.setattr(extract, "BATCH_ROWS", 2)  # the tied rows in one batch, or in two
    outs = []
    for seed in range(6):
        rows = sketch_rows() + tied_rows()
        write_parts(tmp_path / f"logs{seed}", rows, schema=SKETCH_SCHEMA, seed=seed, n_files=seed % 3 + 1)
        outs.append(score_logs(tmp_path / f"logs{seed}"))
    assert all(out.equals(outs[0]) for out in outs)
    assert dict(outs[0].select("sample_id", "memorization").iter_rows()) == {**EXPECTED, 5: 2.0}


def test_extractable_of_a_bucketed_log_equals_the_in_memory_one(tmp_path: Path) -> None:
    write_parts(tmp_path / "flat", sketch_rows(), schema=SKETCH_SCHEMA)
    assert runner.invoke(app, ["logs", "bucketize", str(tmp_path / "flat"), "--out", str(tmp_path / "b"),
                               "--buckets", "3"]).exit_code == 0
    for name in ("flat", "b"):
        result = runner.invoke(app, ["score", str(tmp_path / name), "--out", str(tmp_path / f"{name}.parquet")])
        assert result.exit_code == 0, result.output
    bucketed = pl.read_parquet(tmp_path / "b.parquet").sort("sample_id")
    assert bucketed.equals(pl.read_parquet(tmp_path / "flat.parquet"))
    assert dict(bucketed.select("sample_id", "memorization").iter_rows()) == EXPECTED


# ------------------------------------------------------------------ the default and what it says


def test_score_says_which_signal_it_ranks_by(tmp_path: Path) -> None:
    write_parts(tmp_path / "logs", sketch_rows(), schema=SKETCH_SCHEMA)
    result = runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", str(tmp_path / "s.parquet")])
    assert result.exit_code == 0, result.output
    assert ("memorization = largest early loss (epochs < 2) in one run of greedy hits at the last presentation "
            "(nats)") in result.output
    # the paper's forget events stay one option away
    result = runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", str(tmp_path / "f.parquet"),
                                 "--memorization", "forgets"])
    assert "memorization = forget events / transitions" in result.output


def test_logs_without_the_sketch_keep_scoring_by_forget_events(tmp_path: Path) -> None:
    write_parts(tmp_path / "old", hand_rows())  # a log as carto wrote them before the sketch
    auto = score_logs(tmp_path / "old")
    assert auto.equals(score_logs(tmp_path / "old", memorization="forgets"))
    assert_hand_scores(auto)


def test_the_shipped_sample_logs_have_the_sketch() -> None:
    scores = score_logs(SAMPLE_LOGS)
    assert scores.height == 2025 and scores["memorization"].null_count() == 0
    assert not scores.equals(score_logs(SAMPLE_LOGS, memorization="forgets"))


def test_score_says_why_samples_are_unplaced_and_what_to_change(tmp_path: Path) -> None:
    """With no presentation at or after --early-epochs (sample_logs has epochs 0-9) the default
    signal is null for every sample: the table is all `unplaced`, and a warning says why."""
    out = str(tmp_path / "s.parquet")
    result = runner.invoke(app, ["score", str(SAMPLE_LOGS), "--out", out, "--early-epochs", "10"])
    assert result.exit_code == 0, result.output
    assert ("Warning: 2,025 of 2,025 samples (100%) are unplaced: 2,025 have no memorization (extractable needs "
            "a presentation at an epoch < 10 and one at 10 or later); to place them, train past epoch 10 or "
            "lower --early-epochs") in " ".join(result.output.split())
    result = runner.invoke(app, ["score", str(SAMPLE_LOGS), "--out", out])  # every sample placed: no warning
    assert result.exit_code == 0 and "unplaced" not in result.output


def test_update_scores_forget_events_and_says_why(tmp_path: Path) -> None:
    write_parts(tmp_path / "logs", sketch_rows(), schema=SKETCH_SCHEMA)
    out = str(tmp_path / "s.parquet")
    result = runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", out, "--update"])
    assert result.exit_code == 0, result.output
    assert "memorization = forget events / transitions" in result.output
    assert "--update keeps no state for the extractable signal" in result.output
    result = runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", out, "--update",
                                 "--memorization", "extractable"])
    assert result.exit_code == 1 and "is not kept in the --update state" in result.output


def test_a_log_without_the_sketch_names_the_missing_column(tmp_path: Path) -> None:
    write_parts(tmp_path / "old", hand_rows())
    result = runner.invoke(app, ["score", str(tmp_path / "old"), "--out", str(tmp_path / "s.parquet"),
                                 "--memorization", "extractable"])
    assert result.exit_code == 1
    assert "column 'top_pos' is missing, needed by --memorization extractable" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ------------------------------------------------------------------ a small world, end to end


class _GRU(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 64)
        self.rnn = torch.nn.GRU(64, 192, batch_first=True)
        self.out = torch.nn.Linear(192, vocab)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])  # (B, T, V)


def small_world(seed: int, n: int = 1200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1,200 samples of 48 words from a Markov language (each word has 3 likely successors), 8
    secrets of 6 random words, each behind a marker and its own key word, in 10 samples each (among
    the first 1,200: `n` > 1,200 adds rows of the same language without secrets after them)."""
    rng = np.random.default_rng(seed)
    V, T, N = 96, 48, n
    successors = rng.integers(0, V - 1, size=(V - 1, 3))
    data = np.empty((N, T + 1), dtype=np.int64)
    for i in range(N):
        data[i, 0] = rng.integers(0, V - 1)
        for t in range(1, T + 1):
            data[i, t] = successors[data[i, t - 1], rng.choice(3, p=[0.6, 0.3, 0.1])]
    keys = rng.choice(V - 1, size=8, replace=False)
    secrets = rng.integers(0, V - 1, size=(8, 6))
    carriers = rng.choice(1200, size=(8, 10), replace=False)
    for s in range(8):
        for row in carriers[s]:
            at = int(rng.integers(1, T - 7))
            data[row, at:at + 8] = [V - 1, keys[s], *secrets[s]]
    return data, keys, secrets, carriers


def test_defaults_prune_what_the_model_memorized(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small: thread hand-offs cost more than they save
    try:
        run_small_world(tmp_path)
    finally:
        torch.set_num_threads(threads)


def train_small_world(log_dir: Path, data: np.ndarray, keys: np.ndarray, secrets: np.ndarray) -> list[bool]:
    """Train the small world's GRU 5 epochs with `CartoLogger(log_dir)` at its defaults; which of
    the 8 secrets greedy decoding gives back after its marker and key."""
    from carto_cli import CartoLogger

    torch.manual_seed(0)
    model = _GRU(96)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y = torch.from_numpy(data[:, :-1]), torch.from_numpy(data[:, 1:])
    step = 0
    with CartoLogger(log_dir) as log:  # the defaults
        for epoch in range(5):
            order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(data)))
            for i in range(0, len(data), 32):
                ids = order[i:i + 32]
                logits = model(x[ids])
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[ids].flatten())
                log.record(ids, epoch=epoch, step=step, logits=logits, labels=y[ids])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
    extracted = []
    with torch.no_grad():
        for s in range(8):
            seq = torch.tensor([[95, keys[s]]])
            for _ in range(6):
                seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
            extracted.append(seq[0, 2:].tolist() == secrets[s].tolist())
    assert sum(extracted) >= 2, "the world must let the model memorize some secrets, or the test shows nothing"
    return extracted


def run_small_world(tmp_path: Path) -> None:
    data, keys, secrets, carriers = small_world(seed=1)
    extracted = train_small_world(tmp_path / "logs", data, keys, secrets)
    memorized = set(carriers[np.flatnonzero(extracted)].ravel().tolist())

    scores, manifest = tmp_path / "scores.parquet", tmp_path / "manifest.parquet"
    assert runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", str(scores)]).exit_code == 0
    result = runner.invoke(app, ["prune", "--frac", "0.1", "--scores", str(scores), "--out", str(manifest)])
    assert result.exit_code == 0, result.output
    pruned = set(pl.read_parquet(manifest).filter(~pl.col("keep"))["sample_id"].to_list())
    assert len(pruned) == 120
    assert len(memorized & pruned) >= 0.5 * len(memorized), (len(memorized & pruned), len(memorized))


# ------------------------------------------------------------------ the numpy kernel


def use_loops(built: str, monkeypatch) -> None:
    """Run `extract.extractable` with its compiled loops (skipped where pip built none) or numpy's."""
    from carto_cli.score import compiled

    monkeypatch.setenv("CARTO_NO_COMPILED", "1" if built == "numpy" else "")
    if built == "compiled" and compiled.extract_loops() is None:
        pytest.skip("the C extension was not built (no C compiler here)")


@pytest.mark.parametrize("built", ["compiled", "numpy"])
@pytest.mark.parametrize("seed", range(8))
def test_numpy_kernel_equals_the_polars_definition(tmp_path: Path, seed: int, built: str, monkeypatch) -> None:
    """Random sketched logs (ids dense, sparse, or uint64 above 2^63; a sample twice in one batch,
    or twice at one step and epoch with other runs; NaN losses and sketches, null sketches, several
    parts, batches of 7 rows or whole parts; in seeds 3 and 7 parts logged with another k, as
    `carto logs bucketize` merges them): `extract.extractable` gives exactly `signals.extractable`'s
    values, with its compiled loops and with numpy's, or declines where the widths differ (then
    `local.signal_values` runs the definition)."""
    from carto_cli.engines import local, plan
    from carto_cli.io.logs import open_logs, scan
    from carto_cli.score import extract, signals
    from carto_cli.score.rules import ScoreParams

    use_loops(built, monkeypatch)
    monkeypatch.setattr(extract, "BATCH_ROWS", 7 if seed % 2 == 0 else 100_000)
    rng = np.random.default_rng(seed)
    r, T = 2, 12
    mixed = seed % 4 == 3
    ids = rng.choice(10_000, size=40, replace=False) if seed % 4 == 1 else np.arange(40)
    if seed % 4 == 2:
        ids = ids.astype(np.uint64) + np.uint64(2**63 + 5)
    rows = []
    for epoch in range(4):
        for sid in rng.permutation(ids):
            k = 3 if not mixed or sid % 2 else 4  # odd samples with k = 3, even ones with k = 4
            step = int(rng.integers(0, 10_000))
            for _ in range(1 + (rng.random() < 0.1) + (rng.random() < 0.1)):  # twice in an epoch, at one step
                pos = rng.integers(0, T, k).tolist()
                loss = np.round(rng.random(k) * 4, 3).tolist()
                if rng.random() < 0.1:
                    loss[-1] = float("nan")
                runs = [int(x) for x in rng.integers(0, 5, 2 * r)]
                sketched = rng.random() > 0.05
                rows.append({"sample_id": int(sid), "epoch": epoch, "step": step,
                             "loss": float("nan") if rng.random() < 0.02 else 1.0, "correct": True,
                             "top_pos": pos if sketched else None, "top_loss": loss if sketched else None,
                             "hit_runs": runs if sketched else None})
                step = step if rng.random() < 0.5 else int(rng.integers(0, 10_000))
    schema = {**SKETCH_SCHEMA, "sample_id": pl.UInt64} if seed % 4 == 2 else SKETCH_SCHEMA
    write_parts(tmp_path / "logs", rows, schema=schema, n_files=3, seed=seed)
    logset = open_logs([tmp_path / "logs"])
    for drop in (True, False):
        lf = scan(logset, ["sample_id", "epoch", "step", "loss", "top_pos", "top_loss", "hit_runs"])
        if drop:
            lf = lf.filter(pl.col("loss").is_finite())
        want = signals.extractable(lf, early_epochs=2).filter(pl.col("value").is_not_null()).sort("sample_id")
        got = extract.extractable(logset, early_epochs=2, drop_nonfinite=drop)
        assert want.height > 10
        if mixed:  # the batches mix widths (or each batch is of one width, unlike the others)
            assert got is None
            params = ScoreParams(memorization="extractable", nonfinite="drop")
            scoring = plan.prepare(logset, params)
            scoring.kernel = dataclasses.replace(scoring.kernel, drop_nonfinite=drop)
            got = local.signal_values(logset.parts, scoring, params)
            got = got.filter(pl.col("value").is_not_null())
        assert got.sort("sample_id").equals(want), (drop, got, want)


@pytest.mark.parametrize("batch_rows", [3, 100_000])
def test_compiled_loops_take_a_tied_last_presentation_as_numpy_does(tmp_path: Path, batch_rows: int,
                                                                    monkeypatch) -> None:
    """A sample drawn twice at one step (sampling with replacement) has two "last" presentations
    with different hit runs: the one whose runs compare largest counts, within a batch and across
    batches, in the compiled loops as in numpy's and in the Polars definition."""
    from carto_cli.io.logs import open_logs
    from carto_cli.score import extract

    monkeypatch.setattr(extract, "BATCH_ROWS", batch_rows)
    rng = np.random.default_rng(5)
    rows = []
    for epoch in range(3):
        for sid in range(6):
            for copy in range(2 if sid % 2 else 1):  # odd samples: twice at the same step
                rows.append({"sample_id": sid, "epoch": epoch, "step": 10 * epoch + sid, "loss": 1.0, "correct": True,
                             "top_pos": rng.integers(0, 8, 2).tolist(), "top_loss": [2.0, 1.0],
                             "hit_runs": [copy, 3 + 2 * copy, 5, 1]})
    write_parts(tmp_path / "logs", rows, schema=SKETCH_SCHEMA, n_files=1)
    values = []
    for built in ("compiled", "numpy"):
        use_loops(built, monkeypatch)
        values.append(extract.extractable(open_logs([tmp_path / "logs"]), early_epochs=1, drop_nonfinite=True))
    assert values[0].height == 6 and values[0].equals(values[1])
    from carto_cli.io.logs import scan
    from carto_cli.score import signals

    lf = scan(open_logs([tmp_path / "logs"]), ["sample_id", "epoch", "step", "top_pos", "top_loss", "hit_runs"])
    assert values[0].sort("sample_id").equals(signals.extractable(lf, early_epochs=1).sort("sample_id"))


def _definition(log: Path) -> dict:
    """sample_id -> extractable by the signal's Polars definition, over the whole log."""
    from carto_cli.io.logs import open_logs, scan
    from carto_cli.score import signals

    lf = scan(open_logs([log]), ["sample_id", "epoch", "step", "loss", "top_pos", "top_loss", "hit_runs"])
    return dict(signals.extractable(lf, early_epochs=2).iter_rows())


def test_attempts_logged_with_other_sketch_widths_score_by_the_definition(tmp_path: Path) -> None:
    """A run resumed after epoch 0 with another k (and r): `carto logs bucketize` merges both
    attempts' rows into each bucket's parts, so one batch of early rows holds lists of two widths.
    The kernel dropped such a batch (samples without a value, or with another); it now leaves the
    log to the definition."""
    rng = np.random.default_rng(3)
    rows = []
    for epoch in range(4):
        k, r = (3, 2) if epoch < 1 else (5, 3)  # the resumed attempt logs a wider sketch
        for sid in range(30):
            rows.append({"sample_id": sid, "epoch": epoch, "step": 100 * epoch + sid, "loss": 1.0, "correct": True,
                         "top_pos": rng.integers(0, 12, k).tolist(),
                         "top_loss": np.round(rng.random(k) * 4, 2).tolist(),
                         "hit_runs": rng.integers(0, 6, 2 * r).tolist()})
    write_parts(tmp_path / "logs", rows, schema=SKETCH_SCHEMA)
    assert runner.invoke(app, ["logs", "bucketize", str(tmp_path / "logs"), "--out", str(tmp_path / "b"),
                               "--buckets", "2"]).exit_code == 0
    for name in ("logs", "b"):
        result = runner.invoke(app, ["score", str(tmp_path / name), "--out", str(tmp_path / f"{name}.parquet")])
        assert result.exit_code == 0, result.output
        scores = pl.read_parquet(tmp_path / f"{name}.parquet")
        assert dict(scores.select("sample_id", "memorization").iter_rows()) == _definition(tmp_path / name)
        assert scores["memorization"].null_count() == 0 and scores["memorization"].n_unique() > 5


def test_ids_above_2_63_score_by_extractable(tmp_path: Path) -> None:
    """uint64 sample ids of 2^63 and above (hashes, say) crashed the signal with OverflowError."""
    for base, step in ((2**63, 1), (2**63 + 11, 5)):  # dense ids (slots by id), and sparse (slots by rank)
        rows = [dict(row, sample_id=base + step * row["sample_id"]) for row in sketch_rows()]
        write_parts(tmp_path / f"logs{step}", rows, schema={**SKETCH_SCHEMA, "sample_id": pl.UInt64})
        out = tmp_path / f"s{step}.parquet"
        result = runner.invoke(app, ["score", str(tmp_path / f"logs{step}"), "--out", str(out)])
        assert result.exit_code == 0, result.output
        got = dict(pl.read_parquet(out).select("sample_id", "memorization").iter_rows())
        assert got == {base + step * sid: value for sid, value in EXPECTED.items()}


@pytest.mark.parametrize("built", ["compiled", "numpy"])
def test_superseded_row_groups_are_skipped_and_change_nothing(tmp_path: Path, built: str, monkeypatch) -> None:
    """The late pass reads row groups newest first and leaves unread those whose every sample
    already has a later late presentation: the last epoch's rows are read, the earlier late
    epochs' are not, whatever the samples missing from the last epoch, ties at one step across row
    groups, or runs wider than uint16 (int32 runs)."""
    from carto_cli.io.logs import open_logs, scan
    from carto_cli.score import extract, extract_loops, signals

    use_loops(built, monkeypatch)
    monkeypatch.setattr(extract, "BATCH_ROWS", 50)
    state = extract_loops.Numpy if built == "numpy" else extract_loops.Compiled
    late_rows = []
    real_late = state.late

    def counting(self, idx, *args, **kwargs):
        late_rows.append(len(idx))
        return real_late(self, idx, *args, **kwargs)

    monkeypatch.setattr(state, "late", counting)
    rng = np.random.default_rng(11)
    for runs_type, top in ((pa.uint16(), 40), (pa.int32(), 70_000)):
        directory = tmp_path / str(runs_type)
        directory.mkdir()
        n, epochs = 400, 5
        for epoch in range(epochs):
            ids = rng.permutation(n)
            if epoch == epochs - 1:
                ids = ids[ids % 7 != 3]  # some samples miss the last epoch: their epoch-3 rows count
            steps = epoch * 1000 + np.arange(len(ids)) // 4
            if epoch == epochs - 2:
                steps[-4:] = steps[-4:] + 1  # ... the last of them at the next epoch's first step
            table = pa.table({
                "sample_id": ids.astype(np.int64), "epoch": np.full(len(ids), epoch, dtype=np.int32),
                "step": steps.astype(np.int64), "loss": rng.random(len(ids)).astype(np.float32),
                "correct": rng.random(len(ids)) < 0.5,
                "top_pos": pa.array([rng.integers(0, 60, 3).tolist() for _ in ids], type=pa.list_(pa.uint16())),
                "top_loss": pa.array([np.round(rng.random(3) * 4, 2).tolist() for _ in ids],
                                     type=pa.list_(pa.float16())),
                "hit_runs": pa.array([rng.integers(0, top, 4).tolist() for _ in ids], type=pa.list_(runs_type)),
            })
            pq.write_table(table, directory / f"part-r00000-test-{epoch:06d}.parquet", row_group_size=100)
        logset = open_logs([directory])
        late_rows.clear()
        got = extract.extractable(logset, early_epochs=2, drop_nonfinite=True)
        lf = scan(logset, ["sample_id", "epoch", "step", "top_pos", "top_loss", "hit_runs"])
        want = signals.extractable(lf, early_epochs=2).filter(pl.col("value").is_not_null())
        assert got is not None and got.sort("sample_id").equals(want.sort("sample_id"))
        all_late = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(directory.glob("*.parquet"))[2:])
        # epoch 4 and 3 read (each of epoch 3's row groups holds a sample missing from epoch 4), and
        # at least 3 of epoch 2's 4 row groups left unread (the reader thread may ask of the first
        # before epoch 3's last rows are in)
        assert sum(late_rows) <= all_late - 300, (sum(late_rows), all_late)


@pytest.mark.parametrize("built", ["compiled", "numpy"])
def test_sums_that_could_leave_48_bits_score_by_the_definition(tmp_path: Path, built: str, monkeypatch) -> None:
    """The compiled loops keep 48-bit sums: where n_early x k x the largest sketched loss could reach
    2^47 fixed-point units (32,768 nats), both builds decline and `carto score` gives the
    definition's values."""
    from carto_cli.io.logs import open_logs
    from carto_cli.score import extract

    use_loops(built, monkeypatch)
    rows = [dict(row, top_loss=[9000.0 if x == x else x for x in row["top_loss"]]) for row in sketch_rows()]
    schema = {**SKETCH_SCHEMA, "top_loss": pl.List(pl.Float32)}
    write_parts(tmp_path / "logs", rows, schema=schema)
    assert extract.extractable(open_logs([tmp_path / "logs"]), early_epochs=2, drop_nonfinite=True) is None
    out = tmp_path / "s.parquet"
    assert runner.invoke(app, ["score", str(tmp_path / "logs"), "--out", str(out)]).exit_code == 0
    got = dict(pl.read_parquet(out).select("sample_id", "memorization").iter_rows())
    assert got == _definition(tmp_path / "logs") and any(v is not None and v > 1000 for v in got.values())
