"""Metric functions on cases with known answers: exposure, extraction, perplexity, MIA AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from carto_cli.errors import OptionError
from carto_cli.experiment import metrics
from carto_cli.experiment.tinygpt import GPT, GPTConfig, train_epochs

REFS = np.linspace(10.0, 30.0, 64)  # 64 reference log-perplexities


def test_exposure_of_a_secret_ranked_first_is_log2_n():
    assert metrics.exposure(1.0, REFS) == pytest.approx(math.log2(64))


def test_exposure_of_a_secret_ranked_last_is_about_zero():
    assert metrics.exposure(100.0, REFS) == pytest.approx(math.log2(64 / 65))
    assert abs(metrics.exposure(100.0, REFS)) < 0.05


def test_exposure_counts_ties_against_the_canary():
    assert metrics.exposure(10.0, REFS) == pytest.approx(math.log2(64) - 1)  # rank 2


def test_skewnorm_exposure_extrapolates_beyond_the_references():
    rng = np.random.default_rng(0)
    refs = rng.normal(40.0, 3.0, size=256)
    far = metrics.exposure_skewnorm(5.0, refs)
    assert math.isfinite(far) and far > math.log2(len(refs))
    extreme = metrics.exposure_skewnorm(-5000.0, refs)  # the CDF underflows: tail approximation
    assert math.isfinite(extreme) and extreme > far
    middle = metrics.exposure_skewnorm(float(np.median(refs)), refs)
    assert middle == pytest.approx(1.0, abs=0.3)  # CDF ~ 1/2 at the median
    with pytest.raises(OptionError, match="distinct"):
        metrics.exposure_skewnorm(1.0, [2.0, 2.0, 2.0])


def test_skewnorm_fit_recovers_the_parameters():
    from scipy.stats import skewnorm

    x = skewnorm.rvs(3.0, loc=10.0, scale=2.0, size=20_000, random_state=0)
    assert metrics.fit_skewnorm(x) == pytest.approx((3.0, 10.0, 2.0), rel=0.1)


def test_skewnorm_exposure_stays_sane_on_skewed_references():
    # Strongly right-skewed references: a likelihood fit degenerates to a half-normal starting at the
    # smallest reference and gives a secret just below it ~1e13 bits; the moment fit does not.
    refs = np.concatenate([np.full(5, 29.0) + np.arange(5) * 0.1, 30.0 + np.random.default_rng(1).exponential(2.0, 60)])
    assert metrics.exposure_skewnorm(28.6, refs) < 30


def test_membership_auc_known_answers():
    assert metrics.membership_auc([1.0, 2.0], [3.0, 4.0, 5.0]) == 1.0
    assert metrics.membership_auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    assert metrics.membership_auc([2.0, 2.0], [2.0, 2.0, 2.0]) == 0.5
    assert metrics.membership_auc([1.0, 3.0], [2.0]) == 0.5
    with pytest.raises(OptionError, match="empty"):
        metrics.membership_auc([], [1.0])


class Uniform(torch.nn.Module):
    """A byte LM that gives every byte the same probability (all-zero logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros((*idx.shape, 256)) + 0 * self.unused  # (B, T, V)


def test_perplexity_of_a_uniform_model_is_256():
    rows = np.random.default_rng(0).integers(0, 256, size=(5, 17), dtype=np.uint8)
    assert metrics.perplexity(Uniform(), rows) == pytest.approx(256.0)


def test_log_perplexity_of_a_uniform_model_is_8_bits_per_byte():
    scores = metrics.secret_log_perplexity(Uniform(), ["ab", "abc", "x"], ["1234", "12", "9"])
    assert scores == pytest.approx([32.0, 16.0, 8.0])


@pytest.fixture(scope="module")
def memorised():
    """A tiny GPT overfit on one string: greedy decoding from its start reproduces it."""
    text = "\nthe pin of qhzbt is 4819\n"
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    rows = np.frombuffer(text.encode(), dtype=np.uint8)[None, :].copy()  # (1, len)
    train_epochs(model, rows, epochs=300, batch_size=1, lr=1e-2, seed=0)
    return model


def test_extraction_of_a_memorised_string_succeeds(memorised):
    assert metrics.extraction_success(memorised, "\nthe pin of qhzbt is ", "4819")


def test_extraction_of_a_different_string_fails(memorised):
    assert not metrics.extraction_success(memorised, "\nthe pin of qhzbt is ", "1234")
    got = metrics.extraction_successes(memorised, ["\nthe pin of qhzbt is "] * 2, ["4819", "4818"])
    assert got.tolist() == [True, False]


def test_memorised_secret_has_top_exposure(memorised):
    prefix = "\nthe pin of qhzbt is "
    refs = [f"{v:04d}" for v in range(1000, 1100)]
    scores = metrics.secret_log_perplexity(memorised, [prefix] * 101, ["4819", *refs])
    assert metrics.exposure(scores[0], scores[1:]) == pytest.approx(math.log2(100))
    assert metrics.membership_auc(scores[:1], scores[1:]) == 1.0
