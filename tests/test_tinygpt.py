"""The tiny GPT, its training loop, and the CPython corpus helpers behind the sample logs."""

from __future__ import annotations

import hashlib
import re
import sys
import sysconfig

import numpy as np
import polars as pl
import pytest
import torch

from carto_cli import CartoLogger
from carto_cli.errors import OptionError
from carto_cli.experiment import corpus
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples, train_val_split
from carto_cli.experiment.tinygpt import GPT, GPTConfig, count_steps, eval_loss, train_epochs

TINY = GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32)


def _bytes_rows(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)[None, :].copy()  # (1, len)


# ---------------------------------------------------------------------------- model


def test_logits_shape():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, 256, (3, 17))
    assert model(idx).shape == (3, 17, 256)
    assert model.num_params() > 0


def test_longer_than_block_size_is_refused():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros((1, TINY.block_size + 1), dtype=torch.long))


def test_generate_greedy_reproduces_an_overfit_string():
    text = "hello carto, hello world!"
    torch.manual_seed(0)
    model = GPT(TINY)
    stats = train_epochs(model, _bytes_rows(text), epochs=300, batch_size=1, lr=1e-2, seed=0)
    assert stats["steps"] == 300
    assert stats["final_train_loss"] < 0.05
    model.eval()
    prompt = torch.tensor([[text.encode()[0]]])  # (1, 1)
    out = model.generate_greedy(prompt, max_new_tokens=len(text) - 1)  # (1, len(text))
    assert bytes(out[0].tolist()).decode() == text


def test_generate_greedy_crops_to_block_size():
    model = GPT(TINY)
    out = model.generate_greedy(torch.zeros((2, TINY.block_size), dtype=torch.long), 5)
    assert out.shape == (2, TINY.block_size + 5)


def test_train_epochs_is_reproducible_and_logs_every_presentation(tmp_path):
    samples = to_bytes_samples(cpython_text(40 * 33), sample_len=32)  # (40, 33)
    runs = []
    for run in ("a", "b"):
        torch.manual_seed(0)
        model = GPT(TINY)
        with CartoLogger(tmp_path / run, rows_per_part=50) as log:
            stats = train_epochs(
                model, samples, epochs=3, batch_size=16, lr=3e-3, seed=1, logger=log
            )
        runs.append(pl.read_parquet(sorted((tmp_path / run).glob("*.parquet"))))
        assert stats["steps"] == 3 * 3  # ceil(40 / 16) steps per epoch
        assert eval_loss(model, samples) < 5.0  # untrained: about ln(256) = 5.55
    logs = runs[0]
    assert logs.height == 3 * len(samples)
    # Every sample exactly once per epoch, with its row index as sample_id.
    per_epoch = logs.group_by("epoch").agg(pl.col("sample_id").sort())
    for ids in per_epoch["sample_id"]:
        assert ids.to_list() == list(range(len(samples)))
    assert logs["step"].max() == 8
    assert logs["n_tokens"].unique().to_list() == [32]
    key = ["epoch", "sample_id"]
    assert logs.sort(key).equals(runs[1].sort(key))



def test_a_budget_of_presentations_cuts_the_last_epoch_short(tmp_path):
    """A pruned arm trains the baseline's presentations: 3 epochs of 40 rows over 36 kept rows is 3
    full epochs and 12 presentations of a fourth, every kept row at most once per epoch."""
    samples = to_bytes_samples(cpython_text(36 * 33), sample_len=32)  # (36, 33)
    torch.manual_seed(0)
    with CartoLogger(tmp_path / "log", rows_per_part=50) as log:
        stats = train_epochs(GPT(TINY), samples, epochs=4, batch_size=16, lr=3e-3, seed=1, logger=log,
                             presentations=3 * 40)
    logs = pl.read_parquet(sorted((tmp_path / "log").glob("*.parquet")))
    assert logs.height == 120
    per_epoch = logs.group_by("epoch").agg(pl.len(), pl.col("sample_id").n_unique().alias("distinct")).sort("epoch")
    assert per_epoch["len"].to_list() == [36, 36, 36, 12] and per_epoch["distinct"].to_list() == [36, 36, 36, 12]
    assert stats["steps"] == count_steps(36, 16, 120) == 3 * 3 + 1 == logs["step"].max() + 1
    with pytest.raises(ValueError, match="presentations"):
        train_epochs(GPT(TINY), samples, epochs=1, batch_size=16, lr=3e-3, seed=1, presentations=37)


# ---------------------------------------------------------------------------- corpus


def test_cpython_text_is_deterministic_and_bounded():
    for max_bytes in (0, 1, 1000, 123_457):
        text = cpython_text(max_bytes)
        assert len(text.encode("utf-8")) <= max_bytes
        assert len(text.encode("utf-8")) >= max_bytes - 3  # cut at a character boundary
        assert cpython_text(max_bytes) == text
    text = cpython_text(200_000)
    assert text.startswith("# topic: ")
    assert "# file: " in text  # the second half is stdlib source
    assert "# file: " not in cpython_text(200_000, include_source=False)


def test_cpython_text_source_skips_tests_idlelib_site_packages_and_non_utf8(tmp_path, monkeypatch):
    for rel, content in {
        "b.py": b"b = 1",
        "a.py": b"a = 1",
        "pkg/c.py": b"c = 1",
        "pkg/tests/t.py": b"t = 1",
        "test/t.py": b"t = 1",
        "idlelib/i.py": b"i = 1",
        "site-packages/s.py": b"s = 1",
        "latin1.py": "x = '\xe9'".encode("latin-1"),
        "notes.txt": b"not python",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    source = corpus.source_stream()  # what scripts/make_corpus.py ships
    assert source == b"# file: a.py\na = 1\n\n# file: b.py\nb = 1\n\n# file: pkg/c.py\nc = 1\n\n"
    assert corpus.source_stream(20) == source[:20]


def _shipped_digests() -> dict[str, str]:
    """The sha256 of each shipped file's text, as carto_cli/experiment/data/README.md records it."""
    readme = (corpus.DATA_DIR / "README.md").read_text()
    return {name: digest for name, digest in re.findall(r"`(cpython-[a-z]+\.txt\.gz)`.*`([0-9a-f]{64})`", readme)}


def test_the_shipped_corpus_is_the_text_its_readme_records():
    """Every experiment and sample log trains on these bytes: a corpus rebuilt by another
    interpreter (or edited) changes them, and this fails until the README says so."""
    digests = _shipped_digests()
    assert set(digests) == {corpus.TOPICS_FILE, corpus.SOURCE_FILE}
    for name, digest in digests.items():
        assert hashlib.sha256(corpus._shipped(name)).hexdigest() == digest, name
    assert len(corpus._shipped(corpus.SOURCE_FILE)) == corpus.SOURCE_CAP


def _documents(stream: bytes, header: bytes) -> list[tuple[str, bytes]]:
    """(name, text) of each `header NAME` document of a shipped stream (blank-line separated)."""
    assert stream.startswith(header)
    docs = []
    for doc in stream[len(header):].split(b"\n\n" + header):
        name, _, text = doc.partition(b"\n")
        docs.append((name.decode(), text))
    return docs


def test_make_corpus_rebuilds_the_shipped_corpus_from_its_documents(tmp_path, monkeypatch):
    """On any Python: the shipped files, cut into their documents and handed back to make_corpus's
    builders as a pydoc topics table and a standard library, come out byte for byte (so their order,
    headers, separators, the left-out folders and the 2 MB cut are the builders'). The interpreter's
    own text is compared only on CPython 3.11.7, below."""
    import pydoc_data.topics

    shipped_topics = corpus._shipped(corpus.TOPICS_FILE)
    assert shipped_topics.endswith(b"\n\n")  # shipped whole: the last topic ends in its blank line
    topics = _documents(shipped_topics[:-2], b"# topic: ")
    monkeypatch.setattr(pydoc_data.topics, "topics", {name: text.decode() for name, text in reversed(topics)})
    assert corpus.topics_stream() == corpus._shipped(corpus.TOPICS_FILE)

    sources = _documents(corpus._shipped(corpus.SOURCE_FILE), b"# file: ")
    assert not any(set(name.split("/")[:-1]) & corpus.SKIP_DIRS for name, _ in sources)
    for index, (name, text) in enumerate(sources):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rest = b"\n# the rest of the file, past the cut\n" * 4 if index == len(sources) - 1 else b""
        path.write_bytes(text + rest)
    # what the builder leaves out, named to sort among the shipped files, before the cut
    for rel, content in (("_left_out/test/t.py", b"t = 1"), ("_left_out/tests/t.py", b"t = 1"),
                         ("_left_out/idlelib/i.py", b"i = 1"), ("_left_out/site-packages/s.py", b"s = 1"),
                         ("_left_out/latin1.py", "x = '\xe9'".encode("latin-1"))):  # not UTF-8
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    assert corpus.source_stream() == corpus._shipped(corpus.SOURCE_FILE)


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the corpus was built from CPython 3.11.7's own "
                    "files; other versions ship other text (the tests above run everywhere)")
def test_the_shipped_corpus_is_what_make_corpus_builds_from_cpython_3_11_7():
    assert corpus._shipped(corpus.TOPICS_FILE) == corpus.topics_stream()
    assert corpus._shipped(corpus.SOURCE_FILE) == corpus.source_stream()


def test_cpython_text_rejects_a_negative_budget():
    with pytest.raises(OptionError, match="max_bytes"):
        cpython_text(-1)


def test_to_bytes_samples_cuts_non_overlapping_windows():
    samples = to_bytes_samples("abcdefghij", sample_len=2)  # windows of 3 bytes
    assert samples.dtype == np.uint8
    assert samples.shape == (3, 3)
    assert bytes(samples.reshape(-1)) == b"abcdefghi"
    assert to_bytes_samples("ab", sample_len=2).shape == (0, 3)
    with pytest.raises(OptionError, match="sample_len"):
        to_bytes_samples("abc", sample_len=0)


def test_train_val_split_is_deterministic_and_partitions_rows():
    samples = np.arange(100, dtype=np.uint8).reshape(50, 2)
    train, val = train_val_split(samples, val_frac=0.2, seed=7)
    assert train.shape == (40, 2) and val.shape == (10, 2)
    again_train, again_val = train_val_split(samples, val_frac=0.2, seed=7)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    rows = sorted(map(tuple, np.concatenate([train, val]).tolist()))
    assert rows == sorted(map(tuple, samples.tolist()))
    assert np.all(np.diff(train[:, 0].astype(int)) > 0)  # original order kept
    _, other_val = train_val_split(samples, val_frac=0.2, seed=8)
    assert not np.array_equal(val, other_val)
    assert train_val_split(samples, val_frac=0.0, seed=0)[1].shape == (0, 2)
    with pytest.raises(OptionError, match="val_frac"):
        train_val_split(samples, val_frac=1.0, seed=0)
