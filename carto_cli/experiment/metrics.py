"""What a trained model memorized: exposure, extraction, held-out perplexity, membership inference.

    from carto_cli.experiment import metrics

    scores = metrics.secret_log_perplexity(model, [c.prefix] * 2, [c.secret, ref])  # bits each
    metrics.exposure(scores[0], scores[1:])            # rank-based, at most log2(#references)
    metrics.exposure_skewnorm(scores[0], scores[1:])   # extrapolated beyond the references
    metrics.extraction_success(model, prefix, secret)  # greedy decoding reproduces the secret
    metrics.perplexity(model, val)                     # exp(mean token NLL) on held-out rows
    metrics.membership_auc(member_losses, nonmember_losses)

Scores are log-perplexities: lower means the model finds the secret more likely. The model is any
causal byte-level LM with `forward(idx (B, T)) -> logits (B, T, 256)`, such as `tinygpt.GPT`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch.nn import functional as F

from carto_cli.errors import MissingDependencyError, OptionError
from carto_cli.experiment.tinygpt import eval_loss

# ------------------------------------------------------------------------------------ exposure


def exposure(canary_score: float, reference_scores: Sequence[float]) -> float:
    """Exposure of a secret by rank: log2 |R| - log2 rank (Carlini et al. 2019, "The Secret
    Sharer", the definition of exposure by rank).

    rank = 1 + the number of references scored at or below the canary (a tie counts against the
    canary, so exposure is never overstated). A secret ranked first among N references has
    exposure log2 N; one ranked last has log2 N - log2(N + 1), about 0.
    """
    refs = _nonempty(reference_scores, "reference_scores")
    rank = 1 + int(np.sum(refs <= canary_score))
    return math.log2(len(refs)) - math.log2(rank)


def exposure_skewnorm(canary_score: float, reference_scores: Sequence[float]) -> float:
    """Exposure by extrapolation: -log2 Pr[X <= canary_score] with X a skew-normal fitted to the
    reference scores (Carlini et al. 2019, exposure estimated by extrapolation: a skew-normal
    fits the log-perplexity distribution of the secret space well).

    Resolves exposures beyond log2 |R|, where every reference ranks below the secret. The fit is by
    the method of moments (`fit_skewnorm`), not maximum likelihood: on skewed references the
    likelihood fit can run off to a half-normal whose edge is the smallest reference (shape ~ 1e7,
    seen on this project's runs), which gives a secret just below it an exposure of 1e13 bits.
    Computed from the log-CDF; where even that underflows (z far below -30), from the left-tail approximation
    CDF(z) ~ pdf(z) / (d/dz log pdf(z)) of a log-concave density (the skew-normal is one), so it
    stays finite. Needs at least 3 distinct reference scores.
    """
    refs = _nonempty(reference_scores, "reference_scores")
    if len(np.unique(refs)) < 3:
        raise OptionError("exposure_skewnorm needs at least 3 distinct reference scores to fit")
    skewnorm, norm = _scipy_stats()
    a, loc, scale = fit_skewnorm(refs)
    log_cdf = skewnorm.logcdf(canary_score, a, loc=loc, scale=scale)
    if not np.isfinite(log_cdf):  # the CDF underflowed: use the tail approximation below
        z = (canary_score - loc) / scale
        slope = -z + a * np.exp(norm.logpdf(a * z) - norm.logcdf(a * z))  # d/dz log pdf(z) > 0
        log_cdf = skewnorm.logpdf(z, a) - math.log(slope)
    return float(-log_cdf / math.log(2))


def fit_skewnorm(values: Sequence[float], max_skewness: float = 0.99) -> tuple[float, float, float]:
    """(shape, loc, scale) of the skew-normal whose mean, variance and skewness match `values`.

    The method of moments (Azzalini 1985, "A class of distributions which includes the normal
    ones"; the closed form as in Pewsey 2000). The sample skewness is clipped to +-`max_skewness`,
    inside the skew-normal's range (|skewness| < 0.9953), which bounds |shape| by about 28.
    """
    x = _nonempty(values, "values")
    mean, std = float(x.mean()), float(x.std())
    if std == 0:
        raise OptionError("cannot fit a skew-normal to values that are all equal")
    gamma = float(np.clip(((x - mean) ** 3).mean() / std**3, -max_skewness, max_skewness))
    g = abs(gamma) ** (2 / 3)
    delta = math.copysign(math.sqrt(math.pi / 2 * g / (g + ((4 - math.pi) / 2) ** (2 / 3))), gamma)
    scale = std / math.sqrt(1 - 2 * delta**2 / math.pi)
    loc = mean - scale * delta * math.sqrt(2 / math.pi)
    return delta / math.sqrt(1 - delta**2), loc, scale


@torch.no_grad()
def secret_log_perplexity(model: torch.nn.Module, prefixes: Sequence[str], secrets: Sequence[str]) -> np.ndarray:
    """Log-perplexity (bits) of each secret given its prefix: -sum log2 p(secret bytes | prefix).

    The log-perplexity of Carlini et al. 2019, restricted to the secret's bytes (the prefix is
    the prompt).
    Pairs with equal prefix and secret lengths are scored in one batch.
    """
    out = np.empty(len(prefixes))
    for rows, prompts, targets in _batches(prefixes, secrets, _device(model)):
        full = torch.cat([prompts, targets], dim=1)  # (B, P + S)
        with _evaluating(model):
            logits = model(full[:, :-1]).float()  # (B, P + S - 1, V)
        secret_logits = logits[:, prompts.shape[1] - 1 :]  # (B, S, V): these predict the secret
        nll = F.cross_entropy(secret_logits.transpose(1, 2), targets, reduction="none")  # (B, S)
        out[rows] = nll.sum(dim=1).cpu().numpy() / math.log(2)
    return out


# ---------------------------------------------------------------------------------- extraction


@torch.no_grad()
def extraction_successes(model: torch.nn.Module, prefixes: Sequence[str], secrets: Sequence[str]) -> np.ndarray:
    """For each pair: does greedy decoding from the prefix reproduce the whole secret exactly?

    The extraction test of the lm-extraction-benchmark (google-research/lm-extraction-benchmark) and
    of Pythia's memorization study (Biderman et al. 2023): the prompt is given, the model decodes
    greedily (argmax) as many bytes as the secret has, and only an exact match counts.
    """
    out = np.zeros(len(prefixes), dtype=bool)
    for rows, prompts, targets in _batches(prefixes, secrets, _device(model)):
        with _evaluating(model):
            decoded = model.generate_greedy(prompts, max_new_tokens=targets.shape[1])  # (B, P + S)
        out[rows] = (decoded[:, prompts.shape[1] :] == targets).all(dim=1).cpu().numpy()
    return out


def extraction_success(model: torch.nn.Module, prefix: str, secret: str) -> bool:
    """Whether greedy decoding from `prefix` reproduces `secret` exactly (see `extraction_successes`)."""
    return bool(extraction_successes(model, [prefix], [secret])[0])


# ------------------------------------------------------------------------- held-out perplexity


def perplexity(model: torch.nn.Module, samples: np.ndarray) -> float:
    """exp(mean token negative log-likelihood) over held-out byte rows `samples` (N, T + 1).

    Every row is scored as one window (row[:-1] predicts row[1:]). A model that gives every byte
    the same probability has perplexity 256.
    """
    return math.exp(eval_loss(model, samples))


# ---------------------------------------------------------------------- membership inference


def membership_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """AUC of the loss-threshold membership-inference attack (Yeom et al. 2018, "Privacy Risk in
    Machine Learning"): the probability that a random member has a lower loss than a random
    non-member, ties counted half (the Mann-Whitney U statistic over |M| |N|).

    1.0: every member scores below every non-member; 0.5: no better than chance.
    """
    members = _nonempty(member_scores, "member_scores")
    nonmembers = _nonempty(nonmember_scores, "nonmember_scores")
    sorted_nonmembers = np.sort(nonmembers)
    at_or_below = np.searchsorted(sorted_nonmembers, members, side="right")  # (M,)
    below = np.searchsorted(sorted_nonmembers, members, side="left")  # (M,)
    higher = len(nonmembers) - at_or_below  # non-members the member beats
    ties = at_or_below - below
    return float((higher + 0.5 * ties).sum() / (len(members) * len(nonmembers)))


# ------------------------------------------------------------------------------------ helpers


def _scipy_stats():
    try:
        from scipy.stats import norm, skewnorm
    except ImportError as exc:  # pragma: no cover - exercised only without scipy
        raise MissingDependencyError(
            "scipy is not installed; the skew-normal exposure needs it: pip install scipy"
        ) from exc
    return skewnorm, norm


def _nonempty(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise OptionError(f"{name} is empty")
    return array


def _encode(texts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor([list(t.encode("utf-8")) for t in texts], dtype=torch.long, device=device)  # (B, L)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(prefixes: Sequence[str], secrets: Sequence[str], device: torch.device | str = "cpu"):
    """Yield (row indices, prompts (B, P), secrets (B, S)) on `device` for each group of equal byte
    lengths."""
    if len(prefixes) != len(secrets):
        raise OptionError(f"{len(prefixes)} prefixes but {len(secrets)} secrets")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (p, s) in enumerate(zip(prefixes, secrets)):
        if not p or not s:
            raise OptionError("every prefix and secret must be non-empty")
        groups[(len(p.encode("utf-8")), len(s.encode("utf-8")))].append(i)
    for rows in groups.values():
        yield rows, _encode([prefixes[i] for i in rows], device), _encode([secrets[i] for i in rows], device)


@contextmanager
def _evaluating(model: torch.nn.Module):
    """Put `model` in eval mode (no dropout) for the block, then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
