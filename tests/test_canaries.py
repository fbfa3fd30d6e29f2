"""Canaries: seeded, keyed, each copy in its own sample, references never planted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carto_cli.errors import OptionError
from carto_cli.experiment.canaries import plant

SAMPLES = np.random.default_rng(0).integers(32, 127, size=(400, 49), dtype=np.uint8)  # (N, W)


def _plant(seed: int = 0):
    return plant(SAMPLES, repetitions=(8, 16), per_count=3, n_references=50, seed=seed)


def test_same_seed_same_canaries_other_seed_others():
    (a, ca), (b, cb), (_, cc) = _plant(0), _plant(0), _plant(1)
    assert np.array_equal(a, b) and ca == cb
    assert ca.canaries != cc.canaries
    assert not np.array_equal(SAMPLES, a)  # planting writes into a copy only
    assert np.array_equal(SAMPLES, np.random.default_rng(0).integers(32, 127, size=(400, 49), dtype=np.uint8))


def test_prefixes_and_secrets_are_unique():
    _, cs = _plant()
    assert len({c.prefix for c in cs.canaries}) == len(cs.canaries) == 6
    assert len({c.secret for c in cs.canaries}) == 6


def test_repetitions_honoured_and_each_copy_in_a_different_sample():
    planted, cs = _plant()
    assert sorted(c.repetitions for c in cs.canaries) == [8, 8, 8, 16, 16, 16]
    assert all(len(c.sample_ids) == c.repetitions for c in cs.canaries)
    carriers = cs.carriers
    assert len(np.unique(carriers)) == len(carriers) == 72
    for c in cs.canaries:
        for row, offset in zip(c.sample_ids, c.offsets):
            assert bytes(planted[row, offset : offset + len(c.text)]).decode() == c.text
    untouched = np.setdiff1d(np.arange(len(SAMPLES)), carriers)
    assert np.array_equal(planted[untouched], SAMPLES[untouched])


def test_references_are_never_planted():
    planted, cs = _plant()
    assert len(cs.references) == len(set(cs.references)) == 50
    assert not set(cs.references) & {c.secret for c in cs.canaries}
    text = planted.tobytes()
    for c in cs.canaries:
        for ref in cs.references:
            assert (c.prefix + ref).encode() not in text


def test_record_is_json_serialisable():
    _, cs = _plant()
    record = json.loads(json.dumps(cs.to_dict()))
    assert record["seed"] == 0 and len(record["canaries"]) == 6
    first = record["canaries"][0]
    assert set(first) >= {"key", "prefix", "secret", "repetitions", "sample_ids"}


def test_canaries_that_do_not_fit_are_refused():
    with pytest.raises(OptionError, match="carrying samples"):
        plant(SAMPLES, repetitions=(64,), per_count=7, seed=0)
    with pytest.raises(OptionError, match="longer samples"):
        plant(SAMPLES[:, :10], repetitions=(8,), per_count=1, seed=0)
