"""How each arm of `carto experiment` trains, shown on small hand-made seeds: the paired order, the
loss masks (carto's mask, the Goldfish loss), ExactSubstr's cut text, and the paired comparison."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from carto_cli.experiment import paired, peers
from carto_cli.experiment.arms import baseline_order, baseline_run, masked_run, prepare_seed, pruned_run
from carto_cli.experiment.config import QUICK
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples
from carto_cli.experiment.tinygpt import GPT, GPTConfig, train_epochs

CFG = replace(QUICK, repetitions=(8, 16), per_count=2)
T2 = 4.302652729749464  # Student-t 97.5% quantile, 2 degrees of freedom


@pytest.fixture(scope="module")
def data():
    return prepare_seed(CFG, to_bytes_samples(cpython_text(CFG.corpus_bytes), CFG.sample_len), seed=3)


def test_a_pruned_arm_keeps_the_baselines_order_wherever_its_rows_are(data, tmp_path):
    n = len(data.train)
    base = baseline_run(CFG, data, 3, tmp_path)
    kept = np.arange(0, n, 2)  # every other row
    arm = pruned_run(CFG, data, kept, 3, "seed 3 · half")
    assert len(arm.order) == len(base.order) == CFG.epochs * n  # the same budget of presentations
    same = np.isin(base.order, kept)
    assert (arm.order[same] == base.order[same]).all()  # a kept row's slots are untouched
    assert np.isin(arm.order, kept).all()  # a pruned row's slots go to kept rows
    assert arm.rows_removed == n - len(kept) and arm.kept_share.sum() == len(kept)
    for epoch in range(CFG.epochs):  # each baseline epoch is a permutation of the rows
        assert sorted(base.order[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert baseline_order(replace(CFG, order="shuffled"), n, 3) is None  # each arm draws its own order


def _train(rows, **kwargs):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=rows.shape[1] - 1, n_layer=1, n_head=2, n_embd=16))
    train_epochs(model, rows, epochs=1, batch_size=8, lr=1e-2, seed=0, **kwargs)
    return torch.cat([p.detach().ravel() for p in model.parameters()])


def test_a_loss_mask_drops_exactly_its_targets(data):
    rows = data.train[:32]
    keep = np.ones((32, rows.shape[1] - 1), dtype=bool)
    assert torch.equal(_train(rows), _train(rows, target_keep=keep))  # nothing dropped: plain training
    changed = rows.copy()  # another last byte: a target only (every other token is also an input)
    changed[:, -1] = (changed[:, -1].astype(int) + 1) % 256
    keep[:, -1] = False
    assert torch.equal(_train(rows, target_keep=keep), _train(changed, target_keep=keep))  # never trained on
    assert not torch.equal(_train(rows), _train(changed))


def test_the_mask_arm_drops_every_copy_of_a_private_finding_and_nothing_else(data, tmp_path):
    canary = data.canaries.canaries[0]
    length = len(canary.text)
    copies = [{"sample_id": int(row), "start": int(offset), "length": length}
              for row, offset in zip(canary.sample_ids, canary.offsets)]
    findings = pl.DataFrame({
        "finding": [0, 1], "evidence": [20.0, 30.0], "public": [False, True],
        "copies_at": [copies, [{"sample_id": 0, "start": 0, "length": 10}]]})
    run = masked_run(CFG, data, findings, 3, tmp_path, "seed 3 · mask")
    dropped = np.argwhere(~run.target_keep)
    expected = {(row, offset - 1 + i) for row, offset in zip(canary.sample_ids, canary.offsets) for i in range(length)}
    assert {tuple(x) for x in dropped} == expected  # the public finding is trained on
    assert run.targets_removed == len(expected)
    assert (run.kept_share[list(canary.sample_ids)] == 0).all()  # no copy teaches its secret any more
    assert run.kept_share.sum() == len(data.train) - canary.repetitions
    assert (run.order == baseline_order(CFG, len(data.train), 3)).all()  # the baseline's rows and order
    assert pl.read_parquet(tmp_path / "mask.parquet").height == canary.repetitions


def test_exact_substr_cuts_later_copies_of_the_canaries_only_at_the_tuned_length(data):
    n = len(data.train)
    tuned = peers.exact_substr_run(CFG, data, 3, peers.tuned_min_len(data), "tuned")
    paper = peers.exact_substr_run(CFG, data, 3, 50, "paper")  # 50 > the canary's 26 bytes
    assert peers.tuned_min_len(data) == len(data.canaries.canaries[0].text)
    for canary in data.canaries.canaries:
        kept = tuned.kept_share[list(canary.sample_ids)]
        assert kept.sum() == 1  # every copy but the first is cut
        assert paper.kept_share[list(canary.sample_ids)].all()
    for run in (tuned, paper):  # the cut text is packed again into rows, trained at the same budget
        assert run.train_rows.shape[1] == data.train.shape[1] and len(run.order) == CFG.epochs * n
        assert run.rows_removed == n - len(run.train_rows)
    assert tuned.targets_removed > paper.targets_removed


def test_goldfish_flagged_drops_targets_on_the_flagged_rows_only(data):
    scores = pl.DataFrame({"sample_id": np.arange(len(data.train)),
                           "finding": [7 if i in (2, 5) else None for i in range(len(data.train))]})
    run = peers.peer_run("goldfish-flagged", CFG, data, 3, scores, "flagged")
    rows_with_drops = set(np.flatnonzero((~run.target_keep).any(axis=1)))
    assert rows_with_drops == {2, 5}
    everywhere = peers.peer_run("goldfish", CFG, data, 3, scores, "goldfish")
    with_context = everywhere.target_keep[:, peers.GOLDFISH_H - 1 :]  # the first h - 1 targets are always kept
    assert everywhere.target_keep[:, : peers.GOLDFISH_H - 1].all()
    assert 0.2 < everywhere.targets_removed / with_context.size < 0.3  # one in k = 4 of the others


def _arm(extracted: list[bool], ppl: float, rows: list[float]) -> dict:
    return {"per_canary": [{"extracted": e} for e in extracted], "extraction_rate": float(np.mean(extracted)),
            "exposure_skewnorm": 10.0 * sum(extracted), "val_ppl": ppl, "val_ppl_final": ppl,
            "val_row_nll": rows, "rows_removed": 0, "targets_removed": 0}


def test_the_paired_comparison_pools_canaries_and_pairs_perplexity_by_seed():
    rows = list(np.linspace(1.0, 2.0, 50))
    runs = []
    for shift in (0.001, 0.002, 0.003):
        runs.append({"arms": {
            "baseline": _arm([True, True, True, False], 10.0, rows),
            "default": _arm([False, False, True, False], 10.0 * (1 + shift), [r + shift for r in rows]),
            "random": _arm([True, True, True, False], 10.0 * (1 + 2 * shift), rows),
            "dedup-exact": _arm([True, True, False, False], 10.0, rows),
            "goldfish": _arm([False, False, False, False], 10.5, rows)}})
    table = paired.compare(runs, ("baseline", "default", "random", "dedup-exact", "goldfish"))
    assert table["default"]["extracted"] == [3, 9] and table["default"]["extraction_cut"] == pytest.approx(2 / 3)
    assert table["default"]["ppl_change"]["mean"] == pytest.approx(0.002)
    assert table["default"]["ppl_vs_random"]["mean"] < 0
    lo, hi = table["default"]["ppl_change_rows_ci95"][0]  # rows shifted alike: a tight interval
    assert lo == pytest.approx(np.exp(0.001) - 1) and hi == pytest.approx(np.exp(0.001) - 1)
    verdicts = paired.goals(table)
    assert verdicts["headline"]["default"]["holds"] is True  # 67% cut, upper end of +0.2% +- t below 0.5%
    assert verdicts["headline"]["goldfish"]["holds"] is False  # every canary gone, but +5% perplexity
    assert verdicts["default"]["cut_met"] is False  # 67% < 80%
    assert verdicts["default"]["against_peers"]["goldfish"] == {"cut": False, "ppl": True}
    lo, hi = verdicts["power"]["random_ci95"]  # +0.2%, +0.4%, +0.6%: mean +0.4% +- 0.50%, wider than +-0.3%
    assert verdicts["power"]["half_width"] == pytest.approx(T2 * 0.002 / np.sqrt(3))
    assert lo < 0 < 0.003 < hi and verdicts["power"]["met"] is False
    runs = [{"arms": {**run["arms"], "random": {**run["arms"]["random"], "val_ppl": 10.0 * (1.004 + shift / 10)}}}
            for run, shift in zip(runs, (0.001, 0.002, 0.003))]  # +0.41%, +0.42%, +0.43%: a narrow interval
    power = paired.goals(paired.compare(runs, ("baseline", "random")))["power"]
    assert power["met"] is True and power["random_ci95"][0] > 0.003  # resolved, though not inside +-0.3%
