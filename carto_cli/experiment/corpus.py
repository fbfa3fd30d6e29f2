"""A real, public text corpus that needs no network: text that ships with CPython itself.

    from carto_cli.experiment.corpus import cpython_text, to_bytes_samples, train_val_split

    text = cpython_text(300_000)                     # half pydoc topics, half stdlib source
    samples = to_bytes_samples(text, sample_len=128)  # (N, 129) uint8, one byte per token
    train, val = train_val_split(samples, val_frac=0.1, seed=0)

The text is shipped with carto (`carto_cli/experiment/data/`, see its README.md: CPython 3.11.7, PSF
License), so every installation, whatever its Python, trains on the same bytes. It was built by
`scripts/make_corpus.py` from an interpreter's installation with `topics_stream` and
`source_stream` below. Two sources, both part of every CPython installation and both under the
PSF License (https://docs.python.org/3/license.html):
- the pydoc topics (`pydoc_data.topics.topics`, about 0.47 MB of English reference prose generated
  from the Python documentation), in sorted topic order;
- the standard library's own `.py` files under `sysconfig.get_paths()["stdlib"]`, in sorted path
  order, leaving out tests (`test/`, `tests/`), `idlelib/`, `site-packages/` and any file that is
  not valid UTF-8.

Each document starts with a one-line header (`# topic: NAME` or `# file: REL/PATH.py`) and documents
are separated by a blank line. The vocabulary is bytes (256 symbols): no tokenizer.
"""

from __future__ import annotations

import functools
import gzip
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from carto_cli.errors import OptionError

# Directory names under the stdlib whose contents are not used.
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "__pycache__"})


DATA_DIR = Path(__file__).with_name("data")
TOPICS_FILE = "cpython-topics.txt.gz"
SOURCE_FILE = "cpython-stdlib.txt.gz"
SOURCE_CAP = 2_000_000  # bytes of stdlib source shipped (the topics are shipped whole)


def cpython_text(max_bytes: int, *, include_source: bool = True) -> str:
    """Up to `max_bytes` bytes (UTF-8) of the shipped CPython text.

    With `include_source`, the first half of the budget comes from the pydoc topics and the rest
    from standard-library source files; without it, everything comes from the pydoc topics (at most
    about 0.47 MB). The text is cut at a character boundary, so it may be a few bytes short of the
    budget, never over it; past what is shipped (0.47 MB of topics, 2 MB of source) it is shorter.
    """
    if max_bytes < 0:
        raise OptionError(f"cpython_text: max_bytes must be >= 0, got {max_bytes}")
    topics_budget = max_bytes // 2 if include_source else max_bytes
    text = _cut(_shipped(TOPICS_FILE), topics_budget)
    if include_source:
        used = len(text.encode("utf-8"))
        text += _cut(_shipped(SOURCE_FILE), max_bytes - used)
    return text


@functools.lru_cache(maxsize=2)
def _shipped(name: str) -> bytes:
    return gzip.decompress((DATA_DIR / name).read_bytes())


def _cut(stream: bytes, max_bytes: int) -> str:
    # errors="ignore" drops a multi-byte character cut in half at the end.
    return stream[:max(0, max_bytes)].decode("utf-8", errors="ignore")


def topics_stream() -> bytes:
    """Every pydoc topic of this interpreter, as `# topic: NAME` documents, blank-line separated."""
    return b"".join(doc.encode("utf-8") + b"\n\n" for doc in _topic_documents())


def source_stream(max_bytes: int = SOURCE_CAP) -> bytes:
    """This interpreter's stdlib sources as `# file: REL` documents, blank-line separated, cut at
    `max_bytes` (whole documents until then, the last one cut)."""
    pieces, size = [], 0
    for doc in _source_documents():
        if size >= max_bytes:
            break
        piece = doc.encode("utf-8") + b"\n\n"
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)[:max_bytes]


def to_bytes_samples(text: str, sample_len: int) -> np.ndarray:
    """Cut `text`'s UTF-8 bytes into non-overlapping windows of `sample_len + 1` bytes.

    Returns a (N, sample_len + 1) uint8 array: row[:-1] is a model input and row[1:] its target
    (the extra byte is the shifted target). A tail shorter than a window is dropped; N may be 0.
    """
    if sample_len < 1:
        raise OptionError(f"to_bytes_samples: sample_len must be >= 1, got {sample_len}")
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    width = sample_len + 1
    n = len(data) // width
    return data[: n * width].reshape(n, width).copy()  # (N, sample_len + 1)


def train_val_split(
    samples: np.ndarray, val_frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train, val) at random, deterministically for a given `seed`.

    `round(len(samples) * val_frac)` rows go to val. Both parts keep the rows' original order, so
    a train row's index (its sample_id) follows the corpus order.
    """
    if not 0.0 <= val_frac < 1.0:
        raise OptionError(f"train_val_split: val_frac must be in [0, 1), got {val_frac}")
    n = len(samples)
    n_val = round(n * val_frac)
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return samples[~is_val], samples[is_val]


# ---------------------------------------------------------------------------- the documents


def _topic_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"# topic: {name}\n{topics[name]}"


def _source_documents() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for rel in _stdlib_sources(root):
        try:
            source = (root / rel).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield f"# file: {rel}\n{source}"


def _stdlib_sources(root: Path) -> list[str]:
    """Sorted relative POSIX paths of the stdlib's `.py` files, without the SKIP_DIRS subtrees."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        rel_dir = Path(dirpath).relative_to(root)
        paths.extend((rel_dir / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(paths)
