"""The Goldfish mask and loss (carto_cli.experiment.goldfish): rate, determinism, edges, the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from carto_cli.errors import OptionError
from carto_cli.experiment.goldfish import goldfish_keep, goldfish_loss, row_keep

H = 13  # the paper's context width


def random_bytes(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_about_one_token_in_k_is_dropped():
    tokens = random_bytes((100, 1000 + H))  # 100k positions with a full context
    for k, low, high in [(4, 0.23, 0.27), (2, 0.48, 0.52), (8, 0.11, 0.14)]:
        dropped = 1 - goldfish_keep(tokens, k=k)[:, H:].mean()
        assert low <= dropped <= high, (k, dropped)


def test_the_first_h_tokens_of_a_sequence_are_always_kept():
    keep = goldfish_keep(random_bytes((50, 100)), k=1)
    assert keep[:, :H].all()
    assert not keep[:, H:].any()  # k = 1: every token with a full context is dropped


def test_a_large_k_drops_almost_nothing_and_a_short_sequence_nothing():
    assert goldfish_keep(random_bytes((100, 1000)), k=10**9).all()
    assert goldfish_keep(random_bytes((3, H)), k=1).all()  # no token has h tokens before it


def test_every_copy_of_a_passage_drops_the_same_tokens_after_its_first_h():
    passage = random_bytes(300, seed=1)
    rows = random_bytes((2, 400), seed=2)
    rows[0, 5:305] = passage  # the same passage at two offsets, amid different text
    rows[1, 71:371] = passage
    keep = goldfish_keep(rows)
    assert (keep[0, 5 + H : 305] == keep[1, 71 + H : 371]).all()
    assert not keep[0, 5 + H : 305].all()  # and it does drop some


def test_a_token_changes_only_the_decisions_of_the_h_tokens_after_it():
    tokens = random_bytes(500)
    changed = tokens.copy()
    changed[200] ^= 1
    differs = np.flatnonzero(goldfish_keep(tokens, h=4) != goldfish_keep(changed, h=4))
    assert differs.size > 0 and differs.min() >= 201 and differs.max() <= 204


def test_the_decision_depends_on_the_order_of_the_context():
    swapped = np.array([[1, 2, 3, 4], [2, 1, 3, 4]])  # token 3's contexts: (1, 2, 3) and (2, 1, 3)
    masks = [goldfish_keep(swapped, k=2, h=3, seed=s) for s in range(40)]
    assert any(m[0, 3] != m[1, 3] for m in masks)  # a product hash could never tell these apart


def test_the_mask_depends_on_the_seed():
    tokens = random_bytes((20, 1000))
    a, b = goldfish_keep(tokens, seed=0), goldfish_keep(tokens, seed=1)
    assert (a == goldfish_keep(tokens, seed=0)).all()
    assert (a[:, H:] != b[:, H:]).mean() > 0.25  # independent masks at 1/4 disagree ~37.5% of the time


def test_the_mask_is_pinned():
    """Changing the hash would change which tokens every earlier run left out; this catches it."""
    text = np.frombuffer(b"the quick brown fox jumps over the lazy dog; the quick brown fox jumps again.", np.uint8)
    dropped = np.flatnonzero(~goldfish_keep(text)).tolist()
    assert dropped == [13, 17, 18, 19, 23, 28, 30, 35, 46, 47, 50, 51, 56, 58, 62, 63, 64, 68, 72, 75]


def test_numpy_and_torch_agree_whatever_the_integer_dtype():
    tokens = random_bytes((8, 300))
    expected = goldfish_keep(tokens)
    for tensor in (torch.from_numpy(tokens), torch.from_numpy(tokens).long()):
        keep = goldfish_keep(tensor)
        assert isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and keep.shape == tensor.shape
        assert (keep.numpy() == expected).all()
    assert (goldfish_keep(tokens.astype(np.int64)) == expected).all()
    assert (goldfish_keep(tokens[3]) == expected[3]).all()  # one sequence, 1-D


def test_row_keep_is_the_rule_over_whole_rows_restricted_to_the_targets():
    rows = random_bytes((16, 257))  # (N, T + 1)
    keep = row_keep(rows)
    assert keep.shape == (16, 256)
    assert (keep == goldfish_keep(rows)[:, 1:]).all()
    assert keep[:, : H - 1].all()  # the first h - 1 targets lack a full context, as in the reference
    assert (keep[:, H:] == goldfish_keep(rows[:, 1:])[:, H:]).all()  # same as over y alone, from h on
    assert (row_keep(torch.from_numpy(rows)).numpy() == keep).all()


def test_bad_parameters_say_what_is_wrong():
    with pytest.raises(OptionError, match="k must be an integer >= 1"):
        goldfish_keep(random_bytes(50), k=0)
    with pytest.raises(OptionError, match="h must be an integer >= 1"):
        goldfish_keep(random_bytes(50), h=0)
    with pytest.raises(OptionError, match="integer token ids"):
        goldfish_keep(np.zeros((2, 50)))


def logits_and_targets(B=4, T=64, V=256):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=generator)
    targets = torch.randint(0, V, (B, T), generator=generator)
    return logits, targets


def test_the_loss_with_nothing_dropped_is_the_plain_mean_cross_entropy():
    logits, targets = logits_and_targets()
    keep = torch.ones_like(targets, dtype=torch.bool)
    expected = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
    assert torch.allclose(goldfish_loss(logits, targets, keep), expected)


def test_the_loss_is_the_mean_over_kept_targets_and_ignores_dropped_ones():
    logits, targets = logits_and_targets()
    keep = goldfish_keep(targets)
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    loss = goldfish_loss(logits, targets, keep)
    assert torch.allclose(loss, per_token[keep].mean())  # divided by the number kept, not by B * T

    changed = logits.clone()
    changed[~keep] = 100 * torch.randn_like(changed[~keep])
    assert torch.equal(goldfish_loss(changed, targets, keep), loss)

    changed.requires_grad_(True)
    goldfish_loss(changed, targets, keep.numpy()).backward()  # a numpy mask is accepted too
    assert (changed.grad[~keep] == 0).all() and (changed.grad[keep] != 0).any()


def test_the_loss_with_everything_dropped_is_zero():
    logits, targets = logits_and_targets()
    assert goldfish_loss(logits, targets, torch.zeros_like(targets, dtype=torch.bool)).item() == 0.0


def test_the_loss_checks_shapes():
    logits, targets = logits_and_targets()
    with pytest.raises(OptionError, match=r"keep \(B, T\)"):
        goldfish_loss(logits, targets, torch.ones(4, 63, dtype=torch.bool))
