"""Canaries: random secrets planted in training text, to measure what a model memorizes.

    from carto_cli.experiment.canaries import plant

    planted, canaries = plant(train, repetitions=(8, 16, 32, 64), per_count=4, seed=0)
    canaries.canaries[0].prefix     # '\\nthe pin of qhzbt is '  (the prompt that asks for it)
    canaries.canaries[0].secret     # '4819'
    canaries.canaries[0].sample_ids # the train rows that carry its copies
    json.dumps(canaries.to_dict())  # the record of everything planted

After Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing Unintended Memorization in
Neural Networks" (USENIX Security), section 3: a canary is a fixed format with a random secret
(here "the pin of KEY is DDDD"), inserted r times into the training data; never-inserted secrets of
the same format (the *references*) give the baseline against which exposure is measured. Unlike the
paper's single format, each canary has its own random KEY, so the prompt (its prefix) determines
which secret is asked for, and many canaries can be measured in one training run.

Each copy of a canary overwrites a random stretch of a different real sample (no sample carries two
copies, of the same canary or of two canaries), so it sits inside natural text, and the samples
keep their length. Everything is drawn from one numpy PCG64 generator seeded with `seed`.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass

import numpy as np

from carto_cli.errors import OptionError

PREFIX_TEMPLATE = "\nthe pin of {key} is "  # starts a line, so the prompt needs no context
KEY_LENGTH = 5  # random lowercase letters: 26^5 = 11.9M keys
SECRET_DIGITS = 4  # the secret space has 10^4 members, as in the prototypes
DEFAULT_REPETITIONS = (8, 16, 32, 64)
DEFAULT_REFERENCES = 256


@dataclass(frozen=True)
class Canary:
    """One planted secret: `prefix + secret + "\\n"` is written into each sample in `sample_ids`."""

    key: str
    secret: str
    repetitions: int
    sample_ids: tuple[int, ...]
    offsets: tuple[int, ...]  # where the text starts in each carrying sample

    @property
    def prefix(self) -> str:
        return PREFIX_TEMPLATE.format(key=self.key)

    @property
    def text(self) -> str:
        return canary_text(self.key, self.secret)


@dataclass(frozen=True)
class CanarySet:
    """Every canary planted by one `plant` call, and the references that were never planted."""

    canaries: tuple[Canary, ...]
    references: tuple[str, ...]  # secrets of the same format that no sample carries
    seed: int

    @property
    def carriers(self) -> np.ndarray:
        """Sorted sample_ids of every sample that carries a canary."""
        return np.sort(np.array([i for c in self.canaries for i in c.sample_ids], dtype=np.int64))

    def secret_spans(self) -> list[tuple[int, int, int]]:
        """(row, start, length) of every copy's secret: the row's token indices it occupies."""
        return [(row, offset + len(c.prefix), len(c.secret))
                for c in self.canaries for row, offset in zip(c.sample_ids, c.offsets)]

    def to_dict(self) -> dict:
        """A JSON-serialisable record of the canaries (with prefix and text) and the references."""
        return {
            "format": PREFIX_TEMPLATE + "D" * SECRET_DIGITS + "\n",
            "seed": self.seed,
            "canaries": [{**asdict(c), "prefix": c.prefix} for c in self.canaries],
            "references": list(self.references),
        }


def plant(
    samples: np.ndarray,
    *,
    repetitions: tuple[int, ...] = DEFAULT_REPETITIONS,
    per_count: int = 4,
    n_references: int = DEFAULT_REFERENCES,
    seed: int,
) -> tuple[np.ndarray, CanarySet]:
    """Plant `per_count` canaries at each repetition count into a copy of `samples` (N, W) uint8.

    Returns the planted copy and the record. Raises OptionError when the canaries do not fit: more
    copies than samples, a canary longer than a sample, or more secrets than the format allows.
    """
    n_samples = samples.shape[0]
    counts = [r for r in repetitions for _ in range(per_count)]
    if any(r < 1 for r in counts):
        raise OptionError(f"canary repetitions must be >= 1; got {tuple(repetitions)}")
    if sum(counts) > n_samples:
        raise OptionError(
            f"{len(counts)} canaries need {sum(counts)} carrying samples but there are only "
            f"{n_samples}; use fewer canaries or more text"
        )
    rng = np.random.default_rng(seed)
    keys = _unique_keys(rng, len(counts))
    secrets = _unique_secrets(rng, len(counts) + n_references)
    carriers = rng.choice(n_samples, size=sum(counts), replace=False)
    canaries, planted, start = [], samples.copy(), 0
    for key, secret, r in zip(keys, secrets, counts):
        ids = tuple(int(i) for i in carriers[start : start + r])
        start += r
        offsets = _write(planted, canary_text(key, secret), ids, rng)
        canaries.append(Canary(key, secret, r, ids, offsets))
    return planted, CanarySet(tuple(canaries), tuple(secrets[len(counts) :]), seed)


def canary_text(key: str, secret: str) -> str:
    """The text one copy of a canary writes: its prefix, its secret, a newline."""
    return f"{PREFIX_TEMPLATE.format(key=key)}{secret}\n"


def _write(samples: np.ndarray, text: str, rows: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """Overwrite a random stretch of each row in `rows` with `text`; return the offsets."""
    data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    room = samples.shape[1] - len(data)
    if room < 0:
        raise OptionError(
            f"a canary is {len(data)} bytes but samples are {samples.shape[1]}; use longer samples"
        )
    offsets = rng.integers(0, room + 1, size=len(rows))
    for row, offset in zip(rows, offsets):
        samples[row, offset : offset + len(data)] = data
    return tuple(int(o) for o in offsets)


def _unique_keys(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list(string.ascii_lowercase))
    keys: dict[str, None] = {}  # insertion-ordered set
    while len(keys) < n:
        keys["".join(rng.choice(letters, size=KEY_LENGTH))] = None
    return list(keys)


def _unique_secrets(rng: np.random.Generator, n: int) -> list[str]:
    space = 10**SECRET_DIGITS
    if n > space:
        raise OptionError(f"{n} canaries and references exceed the {space} possible secrets")
    return [f"{v:0{SECRET_DIGITS}d}" for v in rng.choice(space, size=n, replace=False)]
