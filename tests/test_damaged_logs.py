"""Damaged log parts: never a signal, a traceback, a hang or a silently changed set of samples.

A part damaged by a disk, a copy or a buggy writer (bytes flipped, an id or an epoch patched, the
file truncated, a chunk zeroed, footer statistics that disagree with the pages) must end every
command in the correct result or in one `Error:` line naming the part and the fix. The commands
run in a worker process (scripts/fuzz_worker.py), so that a segmentation fault fails a test
instead of killing pytest, and scripts/fuzz_logs.py judges each case against pyarrow's reading of
the files and the reference Polars path; `python scripts/fuzz_logs.py --cases 500` runs a longer,
random set.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _fuzz_module():
    """scripts/fuzz_logs.py, imported as when it runs as a file (its folder on sys.path: it imports
    fuzz_worker.py beside it)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("fuzz_logs", ROOT / "scripts" / "fuzz_logs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_logs"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _fuzz_module()

# Every damage against every command, with each kernel, build and signal in turn: (command, fields).
VARIANTS = [
    ("score", {"method": "auto", "build": "compiled", "signal": "auto"}),
    ("score", {"method": "auto", "build": "numpy", "signal": "forgets"}),
    ("score", {"method": "bitmask", "build": "compiled", "signal": "extractable"}),
    ("score", {"method": "general", "build": "numpy", "signal": "tail-var"}),
    ("score", {"method": "auto", "build": "compiled", "signal": "token-drop", "tokens": True}),
    ("score", {"method": "auto", "build": "numpy", "signal": "extractable", "skip_corrupt": True}),
    ("update", {"build": "compiled"}),
    ("update", {"build": "numpy", "skip_corrupt": True}),
    ("summary", {}),
    ("bucketize", {"skip_corrupt": True}),
]


@pytest.fixture(scope="module")
def worker():
    runner = fuzz.Worker(timeout=120)
    yield runner
    runner.stop()


@pytest.mark.parametrize("damage", fuzz.DAMAGES)
def test_every_command_ends_in_the_correct_result_or_one_error_line(damage: str, worker, tmp_path: Path) -> None:
    failures, outcomes = [], []
    for i, (command, fields) in enumerate(VARIANTS):
        # page checksums on one case in three: a patched value must meet the kernels' own checks too
        case = fuzz.draw_case(2026, fuzz.DAMAGES.index(damage) * 100 + i, damage=damage, command=command,
                              checksums=i % 3 == 2, **fields)
        root = tmp_path / f"case{i}"
        root.mkdir()
        outcome, detail = fuzz.run_case(case, worker, root)
        outcomes.append(outcome)
        if outcome.startswith("FAIL"):
            failures.append(f"{outcome}: {case.name()}: {detail}")
    assert not failures, "\n".join(failures)
    if damage == "none":
        assert set(outcomes) == {"result"}


# ------------------------------------------------------------------ the cases of the issue, one by one


def sketched_log(directory: Path, *, checksums: bool = False, plain: str | None = None, n: int = 3000) -> list[Path]:
    """The issue's log: `n` samples x 4 epochs with the sketch, one part per rank and epoch;
    `plain`: the name of the part written with plain, uncompressed pages (to patch a value of)."""
    case = fuzz.draw_case(7, 0, damage="none", command="score", samples=n, ids="dense", by_epoch=True,
                          checksums=checksums, compression="zstd", tokens=False)
    parts = fuzz.write_log(directory, case, np.random.default_rng(7))
    if plain is not None:
        path = directory / plain
        pq.write_table(pq.read_table(path), path, compression="none", use_dictionary=False,
                       write_page_checksum=checksums)
    return parts


def patch(path: Path, column: str, row: int, value: int) -> int:
    """Write `value` over row `row` of `column` in its plain page (the footer left as it was);
    returns the value it held."""
    table = pq.read_table(path)
    values = table.column(column).to_numpy()
    fmt = {np.dtype(np.int64): "<q", np.dtype(np.uint64): "<Q", np.dtype(np.int32): "<i"}[values.dtype]
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index(column))
    size = struct.calcsize(fmt)
    at = chunk.data_page_offset + chunk.total_compressed_size - (len(values) - row) * size
    data = bytearray(path.read_bytes())
    assert bytes(data[at:at + size]) == struct.pack(fmt, int(values[row]))
    data[at:at + size] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return int(values[row])


def carto(worker, *args, env: dict | None = None) -> dict:
    return worker.ask({"op": "cli", "argv": [str(a) for a in args], "env": env or {}})


def one_error_line(answer: dict) -> str:
    """The `Error:` line of a command that failed as it should: exit 1, that line alone."""
    assert answer.get("rc") == 1, answer
    lines = [line for line in answer["err"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in answer["err"], answer
    return lines[0]


@pytest.mark.parametrize("build", ["compiled", "numpy"])
@pytest.mark.parametrize("memorization", ["forgets", "auto"])
@pytest.mark.parametrize("value", [5_000_000_000, -1, "above"])
def test_an_id_outside_the_footers_range_is_a_damaged_part(worker, tmp_path: Path, value, memorization: str,
                                                            build: str) -> None:
    """An id of 5e9 segfaulted, -1 was a double free, and an id just above the footer's maximum was
    written past the end of the compiled kernel's arrays (a sample missing from the scores)."""
    part = "part-r00001-fuzz-000003.parquet"
    sketched_log(tmp_path / "logs", plain=part)
    path = tmp_path / "logs" / part
    if value == "above":
        value = pq.ParquetFile(path).metadata.row_group(0).column(0).statistics.max + 1
    patch(path, "sample_id", 17, value)
    env = {"CARTO_NO_COMPILED": "1"} if build == "numpy" else {}
    line = one_error_line(carto(worker, "score", tmp_path / "logs", "--out", tmp_path / "s.parquet",
                                "--memorization", memorization, env=env))
    assert f"{path}: row group 0 holds sample_id {value}, outside the range its footer statistics give" in line
    assert "pass --skip-corrupt to leave it out" in line
    # and with --skip-corrupt: the other parts' scores, the part named in a warning
    answer = carto(worker, "score", tmp_path / "logs", "--out", tmp_path / "s.parquet", "--memorization", memorization,
                   "--skip-corrupt", env=env)
    assert answer["rc"] == 0 and f"Warning: skipped {path}: row group 0 holds sample_id" in answer["err"], answer
    path.unlink()
    assert carto(worker, "score", tmp_path / "logs", "--out", tmp_path / "rest.parquet", "--memorization",
                 memorization, env=env)["rc"] == 0
    assert pl.read_parquet(tmp_path / "s.parquet").equals(pl.read_parquet(tmp_path / "rest.parquet"))


def test_an_epoch_the_footer_denies_is_a_damaged_part(worker, tmp_path: Path) -> None:
    """The dense kernel took a row group's one epoch from its footer and never read the column."""
    part = "part-r00000-fuzz-000004.parquet"  # epoch 2
    sketched_log(tmp_path / "logs", plain=part)
    patch(tmp_path / "logs" / part, "epoch", 5, -3)
    line = one_error_line(carto(worker, "score", tmp_path / "logs", "--out", tmp_path / "s.parquet",
                                "--memorization", "forgets"))
    assert f"{tmp_path / 'logs' / part}: row group 0 holds epoch -3..2, outside the range its footer" in line


@pytest.mark.parametrize("command", ["dense", "general", "extractable", "summary", "bucketize"])
def test_a_flipped_bit_in_a_page_with_a_checksum_is_found_by_every_reader(worker, tmp_path: Path,
                                                                          command: str) -> None:
    """A bit flipped in a value of a page written with a checksum was read, and scored, as it was."""
    part = "part-r00000-fuzz-000000.parquet"
    sketched_log(tmp_path / "logs", checksums=True, plain=part)
    path = tmp_path / "logs" / part
    column = {"extractable": "top_loss"}.get(command, "sample_id")
    file = pq.ParquetFile(path)
    chunk = file.metadata.row_group(0).column(file.schema_arrow.names.index(column))
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 3] ^= 0x10  # a value's byte, not a header's
    path.write_bytes(bytes(data))
    argv = {"dense": ["score", "--memorization", "forgets"],
            "general": ["score", "--memorization", "forgets", "--method", "general"],
            "extractable": ["score", "--memorization", "extractable"],
            "summary": ["logs", "summary"],
            "bucketize": ["logs", "bucketize", "--out", tmp_path / "b"]}[command]
    out = ["--out", tmp_path / "s.parquet"] if argv[0] == "score" else []
    line = one_error_line(carto(worker, *argv, tmp_path / "logs", *out))
    assert f"{path}: unreadable (could not verify page integrity, CRC checksum verification failed" in line


def test_a_footer_whose_statistics_are_inverted_is_refused_at_open(tmp_path: Path) -> None:
    from carto_cli.errors import UnreadablePartError
    from carto_cli.io import logs

    parts = sketched_log(tmp_path / "logs", n=200)
    data = bytearray(parts[0].read_bytes())
    footer = len(data) - 8 - struct.unpack("<i", data[-8:-4])[0]
    low, high = pq.read_table(parts[0]).column("step").to_numpy()[[0, -1]]
    tail = bytes(data[footer:]).replace(struct.pack("<q", int(low)), struct.pack("<q", int(high) + 5))
    parts[0].write_bytes(bytes(data[:footer]) + tail)
    with pytest.raises(UnreadablePartError, match="footer's statistics of 'step' are inverted"):
        logs.open_logs([tmp_path / "logs"])
    assert len(logs.open_logs([tmp_path / "logs"], skip_corrupt=True).skipped) == 1


def test_a_part_found_damaged_mid_scan_is_left_out_with_skip_corrupt(worker, tmp_path: Path) -> None:
    """--skip-corrupt used to leave out only parts whose footer could not be read."""
    part = "part-r00001-fuzz-000007.parquet"
    parts = sketched_log(tmp_path / "logs", checksums=True, plain=part, n=300)
    path = tmp_path / "logs" / part
    patch(path, "sample_id", 3, 7)
    for args in (["score", "--out", tmp_path / "s.parquet"], ["logs", "summary", "--json"],
                 ["logs", "bucketize", "--out", tmp_path / "b"]):
        assert "could not verify page integrity" in one_error_line(carto(worker, *args, tmp_path / "logs"))
        answer = carto(worker, *args, tmp_path / "logs", "--skip-corrupt")
        assert answer["rc"] == 0, answer
        assert f"Warning: skipped {path}: unreadable (could not verify page integrity" in answer["err"]
    rest = sum(pq.ParquetFile(p).metadata.num_rows for p in parts if p != path)
    assert pl.scan_parquet(tmp_path / "b" / "**" / "*.parquet").select(pl.len()).collect().item() == rest


def test_the_compiled_loop_checks_every_slot_and_epoch(tmp_path: Path) -> None:
    """compiled.add_rows stops at the first row outside the slots it is given (or the loss matrix's
    epochs) and returns it: nothing is written there, whatever the caller passed."""
    from carto_cli.score import compiled
    from carto_cli.score.accumulators import MASK_BITS, N_BITS, Sums

    if not compiled.available():
        pytest.skip("the C extension was not built (no C compiler here)")
    for many in (False, True):
        sums = Sums(10, packed=not many, losses=(0, 2, np.dtype(np.float32)))
        idx = np.array([0, 9, 3, 10 if not many else 4], dtype=np.int64)
        epoch = np.array([0, 1, 1, 2], dtype=np.int64) if many else 1
        loss, correct = np.ones(4, dtype=np.float32), np.ones(4, dtype=np.bool_)
        assert compiled.add_rows(sums, idx, epoch, loss, correct, None, n_bits=N_BITS, mask_bits=MASK_BITS,
                                 bounds=(0, 9)) == 3  # slot 10, or epoch 2 (the matrix has 0..1)
        assert sums.losses.sum() == 3 and (sums.n_seen if many else sums.words)[3] != 0
        assert compiled.add_rows(sums, idx[:3], epoch if not many else epoch[:3], loss[:3], correct[:3], None,
                                 n_bits=N_BITS, mask_bits=MASK_BITS, bounds=(2, 5)) == 0
