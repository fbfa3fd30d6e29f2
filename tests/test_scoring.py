"""Score definitions on hand-made logs with known answers, and the two counting paths agreeing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import EXPECTED, HAND_LOG, assert_hand_scores, hand_rows, write_parts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carto_cli.engines import local
from carto_cli.engines import plan as planner
from carto_cli.errors import LogFormatError, OptionError
from carto_cli.io import logs
from carto_cli.score import dense, rules


def _score(path: Path, **params) -> local.ScoreResult:
    return local.score(logs.open_logs([path]), rules.ScoreParams(**params))


def _by_id(result: local.ScoreResult) -> dict[int, dict]:
    return {row["sample_id"]: row for row in result.scores.iter_rows(named=True)}


def _close(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b))


@pytest.mark.parametrize("method", ["auto", "bitmask", "general"])
def test_hand_log_scores_match_hand_computed_values(hand_log: Path, method: str) -> None:
    result = _score(hand_log, method=method)
    rows = _by_id(result)
    assert sorted(rows) == sorted(HAND_LOG)
    for sid, (difficulty, forgets, n_seen, n_correct, first, memorization) in EXPECTED.items():
        row = rows[sid]
        assert _close(row["difficulty"], difficulty), sid
        assert row["forget_events"] == forgets, sid
        assert row["n_seen"] == n_seen, sid
        assert row["n_correct"] == n_correct, sid
        assert row["first_learned_epoch"] == first, sid
        assert row["ever_learned"] == (n_correct > 0), sid
        assert _close(row["memorization"], memorization), sid


@pytest.mark.parametrize(("method", "used"), [("auto", "dense"), ("bitmask", "bitmask")])
def test_auto_uses_the_dense_kernel_and_recounts_irregular_samples_exactly(hand_log: Path, method, used) -> None:
    result = _score(hand_log, method=method)
    assert result.method == used  # ids 1..8 are dense: auto counts into arrays; bitmask forces Polars
    # sample 6 has a gap, samples 7 and 8 two presentations in one epoch
    assert result.samples_general == 3


def _shift_ids(rows: list[dict], factor: int, offset: int) -> list[dict]:
    return [dict(r, sample_id=r["sample_id"] * factor + offset) for r in rows]


@pytest.mark.parametrize(
    ("factor", "offset", "used"),
    [
        (1000, 0, "bitmask"),  # sparse ids (span 7001 > 30 rows): the hash kernel
        (1, 2**63 + 5, "dense"),  # uint64 ids above 2^63, dense
        (1, -50, "dense"),  # negative ids, dense
    ],
)
def test_dense_kernel_applies_only_to_dense_ids_and_agrees_with_the_others(tmp_path, factor, offset, used) -> None:
    rows = _shift_ids(hand_rows(), factor, offset)
    dtype = pl.UInt64 if offset > 2**62 else pl.Int64
    write_parts(tmp_path / "logs", rows, schema={"sample_id": dtype, "epoch": pl.Int32, "step": pl.Int64,
                                                 "loss": pl.Float64, "correct": pl.Boolean, "token_acc": pl.Float64,
                                                 "tail_loss": pl.Float64, "rank": pl.Int64})
    auto = _score(tmp_path / "logs")
    assert auto.method == used
    general = _score(tmp_path / "logs", method="general")
    assert auto.scores.equals(general.scores)  # bit for bit
    back = auto.scores.with_columns((pl.col("sample_id") - offset) // factor)
    assert_hand_scores(back.with_columns(pl.col("sample_id").cast(pl.Int64)))


def test_dense_kernel_falls_back_where_an_int64_sum_could_overflow(tmp_path: Path) -> None:
    rows = [dict(r, loss=r["loss"] * 1e8) for r in hand_rows()]  # 4 rows of |loss| 3e8: 4 * 3e8 * 2^32 > 2^62
    write_parts(tmp_path / "logs", rows)
    assert _score(tmp_path / "logs").method == "bitmask"


def test_scores_do_not_depend_on_file_split_or_order(tmp_path: Path) -> None:
    results = []
    for seed, n_files in ((0, 1), (1, 3), (2, 7)):
        log_dir = tmp_path / f"log{seed}"
        write_parts(log_dir, hand_rows(), n_files=n_files, seed=seed)
        results.append(_score(log_dir).scores)
    assert results[0].equals(results[1]) and results[0].equals(results[2])


@pytest.mark.parametrize(("policy", "expected"), [("zero", 0.0), ("max", 1.0), ("exclude", None)])
def test_never_learned_policy(hand_log: Path, policy: str, expected: float | None) -> None:
    rows = _by_id(_score(hand_log, never_learned=policy))
    assert rows[3]["memorization"] == expected
    assert rows[3]["forget_events"] == 0  # the count itself never changes
    assert math.isclose(rows[1]["memorization"], 1 / 3)  # learned samples are unaffected


def test_early_epochs_changes_difficulty_only(hand_log: Path) -> None:
    rows = _by_id(_score(hand_log, early_epochs=1))
    assert rows[1]["difficulty"] == 2.0
    assert rows[4]["difficulty"] == 1.0
    assert rows[1]["forget_events"] == 1


def test_correct_from_loss_with_a_value_threshold(hand_log: Path) -> None:
    # loss < 1.2: sample 1 losses 2.0, 1.0, 1.5, 0.5 -> F T F T -> one forget event
    # sample 6 losses 0.6, 1.2 -> T F (1.2 is not < 1.2) -> one forget event
    result = _score(hand_log, correct_from="loss", threshold="1.2")
    rows = _by_id(result)
    assert result.rule.threshold == 1.2
    assert rows[1]["forget_events"] == 1
    assert rows[6]["forget_events"] == 1
    assert rows[3]["ever_learned"] is False


def test_correct_from_tail_with_a_percentile_threshold(hand_log: Path) -> None:
    result = _score(hand_log, correct_from="tail", threshold="p0")
    # p0 is the smallest tail loss (0.4); "tail_loss < min" is never true: nobody is learned
    assert result.rule.threshold == pytest.approx(0.4)
    assert not result.scores["ever_learned"].any()


def test_correct_from_acc_default_threshold(hand_log: Path) -> None:
    # token_acc is 0.9 where the logged correct is True, else 0.1: acc >= 0.5 reproduces the log
    derived = _score(hand_log, correct_from="acc").scores
    logged = _score(hand_log).scores
    assert derived.equals(logged)


def test_correct_from_a_missing_column_names_it(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "tail_loss"} for r in hand_rows()]
    write_parts(tmp_path / "logs", rows)
    with pytest.raises(LogFormatError, match="column 'tail_loss' is missing"):
        _score(tmp_path / "logs", correct_from="tail")


def test_nonfinite_losses_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = hand_rows() + [
        {"sample_id": 2, "epoch": 3, "step": 39, "loss": float("nan"), "correct": False,
         "token_acc": 0.0, "tail_loss": 0.0},
        {"sample_id": 9, "epoch": 0, "step": 9, "loss": float("inf"), "correct": True,
         "token_acc": 1.0, "tail_loss": 0.0},
    ]
    write_parts(tmp_path / "logs", rows)
    result = _score(tmp_path / "logs")
    assert result.rows_dropped_nonfinite == 2
    assert "dropped 2 row(s)" in result.notes[0]
    rows_by_id = _by_id(result)
    assert 9 not in rows_by_id  # its only row was dropped
    assert rows_by_id[2]["forget_events"] == 0  # the NaN row did not become a forget event
    with pytest.raises(LogFormatError, match="2 row"):
        _score(tmp_path / "logs", nonfinite="error")


def test_bitmask_refused_when_epochs_go_back_in_steps(tmp_path: Path) -> None:
    rows = [
        {"sample_id": 1, "epoch": 0, "step": 50, "loss": 1.0, "correct": True},
        {"sample_id": 1, "epoch": 1, "step": 10, "loss": 1.0, "correct": False},
    ]
    write_parts(tmp_path / "logs", rows, n_files=1)
    with pytest.raises(OptionError, match="overlap"):
        _score(tmp_path / "logs", method="bitmask")
    result = _score(tmp_path / "logs")
    # ordered by step, the False (step 10) comes before the True (step 50): no forget event
    assert result.method == "general"
    assert result.scores["forget_events"].to_list() == [0]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"early_epochs": 0}, "--early-epochs"),
        ({"never_learned": "1000"}, "--never-learned"),
        ({"correct_from": "argmax"}, "--correct-from"),
        ({"threshold": "0.5"}, "--threshold applies"),
        ({"method": "fast"}, "--method"),
    ],
)
def test_bad_parameters_are_option_errors(params: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        rules.ScoreParams(**params)


def test_parse_threshold() -> None:
    assert rules.parse_threshold("p50") == (None, 0.5)
    assert rules.parse_threshold("1.5") == (1.5, None)
    for bad in ("p150", "half", "nan"):
        with pytest.raises(OptionError):
            rules.parse_threshold(bad)


# ---------------------------------------------------------------- property: paths agree with a reference


def reference_scores(rows: list[dict], early_epochs: int) -> dict[int, tuple]:
    """The definitions, written the slow obvious way: sort each sample's rows, walk them."""
    by_sample: dict[int, list[dict]] = {}
    for r in rows:
        by_sample.setdefault(r["sample_id"], []).append(r)
    out = {}
    for sid, pres in by_sample.items():
        pres.sort(key=lambda r: (r["step"], r["epoch"], r["correct"]))
        forgets = sum(1 for a, b in zip(pres, pres[1:]) if a["correct"] and not b["correct"])
        early = [r["loss"] for r in pres if r["epoch"] < early_epochs]
        p = np.exp(-np.maximum([r["loss"] for r in pres], 0.0))  # Dataset Cartography's p, float64
        correctness = sum(r["correct"] for r in pres) / len(pres)
        out[sid] = (forgets, len(pres), sum(early) / len(early) if early else None,
                    (float(np.mean(p)), float(np.std(p)), correctness))
    return out


presentation = st.fixed_dictionaries(
    {
        "sample_id": st.integers(0, 12),
        "epoch": st.integers(0, 5),
        "offset": st.integers(0, 20),
        "loss": st.floats(0, 10, allow_nan=False, width=32),
        "correct": st.booleans(),
    }
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(presentation, min_size=1, max_size=60), epoch_major=st.booleans(), n_files=st.integers(1, 4),
       by_epoch=st.booleans(), first_epoch=st.sampled_from([0, 14]), passes=st.sampled_from([1, 3]))
def test_every_path_matches_the_reference(tmp_path_factory, rows, epoch_major, n_files, by_epoch, first_epoch,
                                          passes) -> None:
    """Every method on random logs, against the definitions. The dense kernel's variants: parts that
    hold one epoch each (`by_epoch`: its packed layout for epochs < 16, one array per field from
    epoch 14 on) or several, and one pass over the sample range or three."""
    for r in rows:  # epoch-major steps make the bitmask path applicable; otherwise steps interleave
        r["epoch"] += first_epoch
        r["step"] = r["epoch"] * 100 + r["offset"] if epoch_major else r["offset"]
        del r["offset"]
    log_dir = tmp_path_factory.mktemp("prop")
    if by_epoch:
        _write_by_epoch(log_dir, rows)
    else:
        write_parts(log_dir, rows, n_files=n_files)
    expected = reference_scores(rows, early_epochs=first_epoch + 2)
    methods = ["general", "auto"] + (["bitmask"] if epoch_major else [])
    frames = []
    for method in methods:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dense, "SAMPLES_PER_PASS", 13 if passes == 1 else 5)  # ids 0..12
            result = _score(log_dir, method=method, early_epochs=first_epoch + 2)
        frames.append(result.scores)
        got = _by_id(result)
        assert sorted(got) == sorted(expected), method
        for sid, (forgets, n_seen, difficulty, (confidence, variability, correctness)) in expected.items():
            assert got[sid]["forget_events"] == forgets, (method, sid)
            # within the documented 3.5e-10 of numpy's mean and population std on the raw rows
            assert abs(got[sid]["confidence"] - confidence) <= 3.5e-10, (method, sid)
            assert abs(got[sid]["variability"] - variability) <= 3.5e-10, (method, sid)
            assert got[sid]["correctness"] == correctness
            assert got[sid]["n_seen"] == n_seen
            assert got[sid]["forget_events"] < got[sid]["n_seen"]
            if difficulty is None:
                assert got[sid]["difficulty"] is None
            else:  # means are exact in fixed point of 2^-32 nats
                assert math.isclose(got[sid]["difficulty"], difficulty, rel_tol=1e-9, abs_tol=2**-32)
            assert got[sid]["forget_events"] <= n_seen // 2
            assert 0 <= got[sid]["memorization"] <= 1
    assert all(frame.equals(frames[0]) for frame in frames)  # every path, bit for bit


def test_derived_rule_never_counts_a_nan_value_as_learned(tmp_path: Path) -> None:
    rows = [
        {"sample_id": 1, "epoch": 0, "step": 0, "loss": 1.0, "correct": True, "token_acc": float("nan")},
        {"sample_id": 1, "epoch": 1, "step": 1, "loss": 1.0, "correct": True, "token_acc": 0.9},
    ]
    write_parts(tmp_path / "logs", rows, n_files=1)
    row = _by_id(_score(tmp_path / "logs", correct_from="acc"))[1]
    assert row["n_correct"] == 1 and row["first_learned_epoch"] == 1


def _write_by_epoch(directory: Path, rows: list[dict]) -> None:
    """One part per epoch, as a training run writes them (row groups hold a single epoch)."""
    directory.mkdir(parents=True, exist_ok=True)
    for epoch in sorted({r["epoch"] for r in rows}):
        pl.DataFrame([r for r in rows if r["epoch"] == epoch]).write_parquet(directory / f"part-e{epoch}.parquet")


def test_one_epoch_per_row_group_skips_the_preflight_pass(tmp_path: Path, monkeypatch) -> None:
    _write_by_epoch(tmp_path / "logs", hand_rows())
    general = _score(tmp_path / "logs", method="general")

    def no_preflight(*args, **kwargs):
        raise AssertionError("the footers should have answered")

    monkeypatch.setattr(planner, "_preflight", no_preflight)
    fast = _score(tmp_path / "logs")
    assert fast.method == "dense" and fast.samples_general == 3
    assert fast.scores.equals(general.scores)  # bit for bit


def test_footer_path_drops_and_counts_nonfinite_losses_itself(tmp_path: Path) -> None:
    nan_rows = [
        {"sample_id": 2, "epoch": 3, "step": 39, "loss": float("nan"), "correct": False,
         "token_acc": 0.0, "tail_loss": 0.0},
        {"sample_id": 1, "epoch": 0, "step": 9, "loss": float("inf"), "correct": True,
         "token_acc": 1.0, "tail_loss": 0.0},
    ]
    _write_by_epoch(tmp_path / "logs", hand_rows() + nan_rows)
    result = _score(tmp_path / "logs")
    assert result.method == "dense" and result.rows_dropped_nonfinite == 2
    assert result.notes == ["dropped 2 row(s) with a NaN or infinite loss"]
    assert result.scores.equals(_score(tmp_path / "logs", method="general").scores)
    with pytest.raises(LogFormatError, match="2 row"):
        _score(tmp_path / "logs", nonfinite="error")


def _layouts(monkeypatch) -> list[bool]:
    """Record the layout (packed or not) of every pass the dense kernel makes."""
    seen: list[bool] = []
    real = dense._Sums.__init__

    def spy(self, width, packed, *args, **kwargs):
        seen.append(packed)
        real(self, width, packed, *args, **kwargs)

    monkeypatch.setattr(dense._Sums, "__init__", spy)
    return seen


def test_dense_kernel_packs_one_word_per_sample_when_parts_hold_one_epoch(tmp_path: Path, monkeypatch) -> None:
    _write_by_epoch(tmp_path / "logs", hand_rows())
    layouts = _layouts(monkeypatch)
    result = _score(tmp_path / "logs")
    assert result.method == "dense" and layouts == [True]
    assert_hand_scores(result.scores)


def test_dense_kernel_unpacks_when_a_sample_overflows_a_packed_field(tmp_path: Path, monkeypatch) -> None:
    # sample 9 is presented 600 times in epoch 0: more than the packed row count (9 bits) holds
    many = [{"sample_id": 9, "epoch": 0, "step": 1 + i % 9, "loss": 0.25, "correct": i % 2 == 0,
             "token_acc": 0.5, "tail_loss": 0.5} for i in range(600)]
    _write_by_epoch(tmp_path / "logs", hand_rows() + many)
    layouts = _layouts(monkeypatch)
    result = _score(tmp_path / "logs")
    assert result.method == "dense" and layouts == [True, False]  # the overflow was caught; one array per field
    assert result.scores.equals(_score(tmp_path / "logs", method="general").scores)
    assert _by_id(result)[9]["n_seen"] == 600


def test_a_declined_dense_pass_is_not_run_twice(tmp_path: Path, monkeypatch) -> None:
    rows = [dict(r, loss=r["loss"] * 1e8) for r in hand_rows()]  # too large for the dense kernel's int64 sums
    _write_by_epoch(tmp_path / "logs", rows)
    calls = []
    real = dense._reduce  # what the numpy (`dense.state`) and compiled (`dense.scores`) versions both run
    monkeypatch.setattr(dense, "_reduce", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = _score(tmp_path / "logs")
    assert result.method == "bitmask" and calls == [1]  # the hash kernel took over after one try
    assert result.scores.equals(_score(tmp_path / "logs", method="general").scores)
