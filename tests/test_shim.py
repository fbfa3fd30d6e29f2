"""The logging shim: what it computes from logits, what it writes, and what survives a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from carto_cli import CartoLogger
from carto_cli.errors import CartoError, OptionError
from carto_cli.io import logs
from carto_cli.log import schema


def read_log(path: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p.path) for p in logs.open_logs([path]).parts]).sort(
        ["step", "sample_id"]
    )


def reference_stats(logits: torch.Tensor, labels: torch.Tensor, k: int, ignore: int = -100) -> list[dict]:
    """Per-sample statistics computed one sample at a time in float64, the obvious way."""
    out = []
    for b in range(logits.shape[0]):
        keep = labels[b] != ignore
        lg, y = logits[b][keep].double(), labels[b][keep]
        if len(y) == 0:
            out.append(None)
            continue
        tok = torch.nn.functional.cross_entropy(lg, y, reduction="none")
        top = tok.sort(descending=True).values[:k]
        out.append({"loss": tok.mean().item(), "token_acc": (lg.argmax(-1) == y).double().mean().item(),
                    "tail_loss": top.mean().item(), "n_tokens": len(y)})
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_bytes", [1, 256 * 2**20])
@pytest.mark.parametrize("ignore", [-100, 0])  # 0: a padding id that is also a vocabulary id
def test_logits_path_matches_reference(tmp_path: Path, dtype, chunk_bytes: int, ignore: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, 11, generator=g).to(dtype)  # (B, T, V)
    labels = torch.randint(1, 11, (5, 12), generator=g)  # (B, T)
    labels[0, 3] = 0  # with ignore=-100, token 0 is an ordinary target
    labels[1, :9] = ignore  # 3 targets: fewer than k, the tail is their mean
    labels[2, :] = ignore  # no target at all
    labels[3, ::2] = ignore
    logits[3, 0, 0] = float("inf")  # position 0 of sample 3 has no target: must not poison its sums
    with CartoLogger(tmp_path, tail_k=4, chunk_bytes=chunk_bytes, ignore_index=ignore) as log:
        log.record(torch.arange(100, 105), epoch=0, step=7, logits=logits, labels=labels)
    got = read_log(tmp_path).sort("sample_id")
    ref = reference_stats(logits.float(), labels, k=4, ignore=ignore)
    assert got["sample_id"].to_list() == list(range(100, 105))
    assert set(got["step"]) == {7} and set(got["epoch"]) == {0} and set(got["rank"]) == {0}
    for row, want in zip(got.iter_rows(named=True), ref):
        if want is None:  # an empty sample is logged with NaN loss (the reader drops and reports it)
            assert np.isnan(row["loss"]) and row["n_tokens"] == 0 and row["correct"] is False
            continue
        for name in ("loss", "token_acc", "tail_loss"):
            assert row[name] == pytest.approx(want[name], rel=1e-5), name
        assert row["n_tokens"] == want["n_tokens"]
        assert row["correct"] == (want["token_acc"] >= 0.5)


def test_correct_rule_threshold_and_metadata(tmp_path: Path) -> None:
    logits = torch.zeros(2, 4, 3)
    logits[:, :, 1] = 5.0  # greedy prediction is always token 1
    labels = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # accuracies 0.75 and 0.25
    with CartoLogger(tmp_path, correct_threshold=0.7) as log:
        log.record([0, 1], epoch=0, step=0, logits=logits, labels=labels)
    got = read_log(tmp_path).sort("sample_id")
    assert got["token_acc"].to_list() == [0.75, 0.25]
    assert got["correct"].to_list() == [True, False]
    meta = logs.open_logs([tmp_path]).parts[0].metadata
    assert meta[schema.META_CORRECT_RULE] == "token_acc>=0.7"
    assert meta[schema.META_RANK] == "0"
    assert meta[schema.META_TAIL_K] == "8"


def test_precomputed_values_are_logged_as_given(tmp_path: Path) -> None:
    with CartoLogger(tmp_path) as log:
        log.record(np.array([3, 4]), epoch=1, step=9, loss=torch.tensor([0.25, 2.5]), correct=[True, False])
        log.record([5], epoch=1, step=10, loss=[1.0], token_acc=[0.6])
    got = read_log(tmp_path)
    assert got.select("sample_id", "loss", "correct").rows() == [(3, 0.25, True), (4, 2.5, False), (5, 1.0, True)]
    assert got["tail_loss"].null_count() == 3  # not given: null, not invented
    assert got["token_acc"].to_list()[:2] == [None, None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either logits= and labels=, or loss="),
        ({"loss": [1.0]}, "pass correct="),
        ({"logits": torch.zeros(1, 2, 3)}, "needs labels="),
        ({"loss": [1.0, 2.0], "correct": [True, False]}, "has 1 rows but the batch has 2"),
        ({"logits": torch.zeros(1, 2), "labels": torch.zeros(1, 2)}, r"\(B, T, V\)"),
    ],
)
def test_record_rejects_inconsistent_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with CartoLogger(tmp_path) as log, pytest.raises(OptionError, match=message):
        log.record([0], epoch=0, step=0, **kwargs)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([0.5], r"sample_ids must be integers; got float64 values such as np.float64\(0.5\)"),
        (["a"], "sample_ids must be integers; got <U1 values"),
        ([True], "sample_ids must be integers; got bool values"),
        (torch.tensor([1.0]), "sample_ids must be integers; got a torch.float32 tensor"),
        (torch.tensor([True]), "sample_ids must be integers; got a torch.bool tensor"),
        (np.array([2**63], dtype=np.uint64), r"sample_id 9223372036854775808 is above 2\^63 - 1"),
        ([2**64 - 1], r"sample_id 18446744073709551615 is above 2\^63 - 1"),
    ],
)
def test_ids_that_cannot_be_logged_are_refused_at_record_not_when_a_part_is_written(
        tmp_path: Path, ids, message: str) -> None:
    """The log's sample_id is int64: anything else fails at the call that passed it, in one line,
    rather than on the writer thread when a part is written (at the millionth row, or at close)."""
    with CartoLogger(tmp_path) as log:
        with pytest.raises(OptionError, match=message):
            log.record(ids, epoch=0, step=0, loss=[1.0], correct=[True])
        log.record(np.array([2**63 - 1], dtype=np.uint64), epoch=0, step=1, loss=[1.0], correct=[True])
    assert read_log(tmp_path)["sample_id"].to_list() == [2**63 - 1]  # unsigned ids that fit are logged


def test_out_dir_from_environment_and_rank_from_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CARTO_LOG_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("RANK", "3")
    with CartoLogger() as log:
        log.record([1], epoch=0, step=0, loss=[1.0], correct=[True])
    [part] = logs.open_logs([tmp_path / "env"]).parts
    assert part.path.name.startswith("part-r00003-")
    assert read_log(tmp_path / "env")["rank"].to_list() == [3]
    monkeypatch.delenv("CARTO_LOG_DIR")
    with pytest.raises(OptionError, match="CARTO_LOG_DIR"):
        CartoLogger()


def test_flush_makes_every_recorded_row_a_finished_part_and_parts_rotate(tmp_path: Path) -> None:
    log = CartoLogger(tmp_path, rows_per_part=4)
    for step in range(3):
        log.record([step * 3, step * 3 + 1, step * 3 + 2], epoch=0, step=step, loss=[1.0] * 3, correct=[True] * 3)
    log.flush()
    # 9 rows: one part rotated at 6 rows (the batch that crossed 4), one flushed with 3
    assert len(log.parts_written) == 2 and log.rows_written == 9
    assert read_log(tmp_path).height == 9
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    log.close()
    log.close()  # idempotent
    with pytest.raises(CartoError, match="after close"):
        log.record([1], epoch=0, step=9, loss=[1.0], correct=[True])


def test_writer_failure_reaches_the_training_loop(tmp_path: Path, monkeypatch) -> None:
    log = CartoLogger(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    log.record([1], epoch=0, step=0, loss=[1.0], correct=[True])
    with pytest.raises(CartoError, match="disk full"):
        log.flush()
    with pytest.raises(CartoError, match="disk full"):
        log.close()


def test_record_blocks_when_the_queue_is_full(tmp_path: Path) -> None:
    """Back-pressure: a stalled writer makes record() wait instead of buffering without bound."""
    log = CartoLogger(tmp_path, max_pending=2)
    gate = threading.Event()
    original = log._writer.write_part

    def stalled() -> None:
        gate.wait()
        original()

    log._writer.write_part = stalled
    log._writer.rows_per_part = 1  # every batch triggers a (stalled) part write
    done = []

    def producer() -> None:
        for step in range(6):
            log.record([step], epoch=0, step=step, loss=[1.0], correct=[True])
            done.append(step)

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.5)
    # one batch is held by the writer, two wait in the queue, the fourth record() blocks
    assert len(done) <= 3
    assert log._writer.queue.qsize() <= 2
    gate.set()
    t.join(timeout=10)
    assert len(done) == 6
    log.close()
    assert read_log(tmp_path).height == 6


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from carto_cli import CartoLogger
    log = CartoLogger(sys.argv[1], rows_per_part=1000)
    for step in range(5):
        log.record(list(range(step * 10, step * 10 + 10)), epoch=0, step=step, loss=[1.0] * 10, correct=[True] * 10)
    log.flush()
    for step in range(5, 8):   # recorded after the last flush: may be lost by a SIGKILL
        log.record(list(range(step * 10, step * 10 + 10)), epoch=0, step=step, loss=[1.0] * 10, correct=[True] * 10)
    print("flushed", flush=True)
    time.sleep(60)
    """
)


def test_sigkill_loses_only_rows_after_the_last_flush(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(log_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "flushed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # a half-written part left by a crash is invisible to readers
    (log_dir / ".part-r00000-crash-000009.parquet.tmp").write_bytes(b"PAR1 half a part")
    got = read_log(log_dir)
    assert got.height == 50
    assert sorted(got["sample_id"]) == list(range(50))


def test_token_losses_are_logged_per_position_for_every_sample_or_a_probe_subset(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 9, generator=g)  # (B, T, V)
    labels = torch.randint(0, 9, (4, 6), generator=g)
    labels[2, :2] = -100  # a masked prompt: the list starts at the first target, NaN after the row's end
    labels[3, 3] = -100  # an ignored position among the targets: NaN where it is
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.clamp_min(0).flatten(),
                                             reduction="none").view(4, 6)
    with CartoLogger(tmp_path / "all", token_losses=True) as log:
        log.record([10, 11, 12, 13], epoch=0, step=0, logits=logits, labels=labels)
    with CartoLogger(tmp_path / "probe", token_losses=np.array([11, 12, 99])) as log:
        log.record([10, 11, 12, 13], epoch=0, step=0, logits=logits, labels=labels)
    with CartoLogger(tmp_path / "none") as log:
        log.record([10, 11, 12, 13], epoch=0, step=0, logits=logits, labels=labels)
    every = read_log(tmp_path / "all").sort("sample_id")
    assert every.schema["token_loss"] == pl.List(pl.Float16)  # 2 bytes a position
    for b, row in enumerate(every["token_loss"].to_list()):
        first = 2 if b == 2 else 0  # element j is the loss at the first target + j
        for j, value in enumerate(row):
            t = first + j
            if t >= 6 or labels[b, t] == -100:
                assert np.isnan(value)
            else:
                assert value == pytest.approx(want[b, t].item(), rel=1e-3, abs=1e-3)
    probe = read_log(tmp_path / "probe").sort("sample_id")
    assert probe["token_loss"].is_null().to_list() == [True, False, False, True]
    assert probe["token_loss"][1].to_list() == every["token_loss"][1].to_list()
    assert read_log(tmp_path / "none")["token_loss"].null_count() == 4


def test_precomputed_token_losses_need_the_option(tmp_path: Path) -> None:
    with CartoLogger(tmp_path, token_losses=True) as log:
        log.record([0], epoch=0, step=0, loss=[1.0], correct=[True], token_loss=[[0.5, 1.5]])
    assert read_log(tmp_path)["token_loss"].to_list() == [[0.5, 1.5]]
    with CartoLogger(tmp_path / "off") as log, pytest.raises(OptionError, match="token_losses=True"):
        log.record([0], epoch=0, step=0, loss=[1.0], correct=[True], token_loss=[[0.5, 1.5]])


FUSED_CHECK = """
import torch, torch.nn.functional as F
from carto_cli.log import fused
torch.manual_seed(0)
B, T, V = 3, 6, 5000  # V is no multiple of the kernel's block: a partial last block
for dtype in (torch.float32, torch.bfloat16):  # bf16: coarse values, so ties for the argmax
    logits = torch.randn(B, T, V).to(dtype)
    labels = torch.randint(0, V, (B, T))
    labels[0, 2:] = -100
    logits[0, 4, 7] = float("inf")  # no target at that position: must not matter
    logits[1, 0, [100, 4500]] = 50.0  # a tie across blocks and one within a block: the first index wins
    logits[1, 1, [10, 20]] = 50.0
    labels[1, 0], labels[1, 1] = 100, 10
    loss, hit = fused.launch(torch, fused._load("token_stats_kernel"), logits, labels, -100)
    exact = logits.double()
    valid = labels != -100
    ref = F.cross_entropy(exact.reshape(-1, V), labels.clamp_min(0).reshape(-1), reduction="none").view(B, T)
    ref = torch.where(valid, ref, 0.0)
    assert (loss.double() - ref).abs().max().item() < 1e-5, dtype
    assert torch.equal(hit, (exact.argmax(-1) == labels) & valid), dtype
print("ok")
"""


def test_fused_kernel_matches_a_float64_reference_in_the_triton_interpreter() -> None:
    """The CUDA kernel of carto_cli.log.fused, run on the CPU by Triton's interpreter (the same kernel
    code; the GPU run is benchmarks/bench_shim.py --device cuda)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", FUSED_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


SKETCH_CHECK = """
import torch
from carto_cli.log import fused, sketch
torch.manual_seed(0)
for B, T in [(4, 37), (3, 5), (2, 1), (5, 300), (2, 16)]:  # T = 1 and 5 are shorter than k; 300 is no power of two
    loss, hit, valid = torch.rand(B, T) * 5, torch.rand(B, T) < 0.7, torch.rand(B, T) < 0.9
    if T >= 5:
        valid[0] = False  # a sample with no targets: (0, NaN) and (0, 0) padding
        valid[1, 0] = True  # the tie below is at positions 1 and 3 from the first target
        loss[1, 1] = loss[1, 3] = 9.0  # an exact tie for the largest loss
    if B > 2:
        valid[B - 1, :3] = False  # a masked prefix: positions are relative to the first target
    for k, r in [(10, 6), (3, 2), (20, 20)]:  # r = 20 > the number of runs and, at T = 16, > T
        pos, los, runs = fused.launch_sketch(torch, fused._load("sketch_kernel"), loss, hit, valid, k, r)
        ref_pos, ref_los, ref_runs = sketch.sketch(torch, loss, hit, valid, k, r)
        assert torch.equal(runs, ref_runs), (T, k, r)
        assert torch.equal(los.isnan(), ref_los.isnan()) and torch.equal(los.nan_to_num(), ref_los.nan_to_num())
        if T >= 5:  # the tie: the kernel keeps the earlier position first (torch.topk promises no order)
            assert pos[1, :2].tolist() == [1, 3], pos[1]
            pos[1, :2], ref_pos[1, :2] = 0, 0
        assert torch.equal(pos, ref_pos), (T, k, r)
print("ok")
"""


def test_sketch_kernel_matches_the_pytorch_sketch_in_the_triton_interpreter() -> None:
    """The CUDA sketch kernel (one launch instead of the PyTorch version's ~30 small kernels) writes
    what carto_cli.log.sketch writes (positions relative to the first target), run on the CPU by
    Triton's interpreter."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", SKETCH_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_the_kernels_are_not_used_for_cpu_tensors() -> None:
    from carto_cli.log import fused

    labels = torch.zeros(1, 2, dtype=torch.long)
    assert fused.token_stats(torch, torch.zeros(1, 2, fused.MIN_VOCAB), labels, -100) is None
    flags = torch.ones(1, 2, dtype=torch.bool)
    assert fused.sketch_stats(torch, torch.zeros(1, 2), flags, flags, 10, 6) is None


@pytest.mark.parametrize(
    ("kernel", "launcher", "shape", "call", "message"),
    [
        ("token_stats_kernel", "launch", (1, 2, 4096), lambda fused, x: fused.token_stats(torch, x, None, -100),
         r"fused logits kernel failed \(Failed to find C compiler\); using PyTorch ops"),
        ("sketch_kernel", "launch_sketch", (1, 2), lambda fused, x: fused.sketch_stats(torch, x, None, None, 10, 6),
         r"sketch kernel failed \(Failed to find C compiler\); using PyTorch ops"),
    ],
)
def test_a_failing_kernel_falls_back_to_pytorch_ops_with_a_warning(monkeypatch, kernel, launcher, shape, call,
                                                                   message) -> None:
    """Triton that cannot compile or launch (no C compiler, an old GPU, no shared memory) must not
    fail the training loop: one warning, then the PyTorch ops, and the kernel is not tried again."""
    pytest.importorskip("triton")
    from carto_cli.log import fused

    def fail(*args):
        raise RuntimeError("Failed to find C compiler\ndetails")

    class CudaTensor:  # stands in for a CUDA tensor: only what the dispatch looks at before launching
        is_cuda = True

    CudaTensor.shape = shape
    monkeypatch.delitem(fused._KERNELS, kernel, raising=False)  # not loaded yet
    monkeypatch.setattr(fused, launcher, fail)
    with pytest.warns(RuntimeWarning, match=message):
        assert call(fused, CudaTensor()) is None
    assert fused._KERNELS[kernel] is False  # not tried again: the next record goes straight to PyTorch
    assert call(fused, CudaTensor()) is None


def test_parts_carry_page_checksums_that_find_a_flipped_bit(tmp_path: Path) -> None:
    """A bit flipped in a data page of a zstd part decompresses to wrong values without an error;
    the page checksums the shim writes make a verifying reader fail on it instead."""
    with CartoLogger(tmp_path, sketch_k=0, sketch_runs=0) as log:
        log.record(np.arange(20_000), epoch=0, step=0, loss=np.random.default_rng(0).random(20_000),
                   correct=np.ones(20_000, dtype=bool))
    [path] = log.parts_written
    footer = pq.ParquetFile(path).metadata
    column = footer.row_group(0).column(footer.schema.to_arrow_schema().get_field_index("loss"))
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    damaged = bytearray(path.read_bytes())
    damaged[start + column.total_compressed_size - 64] ^= 0x01  # a bit inside the last page's values
    path.write_bytes(bytes(damaged))
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.ParquetFile(path, page_checksum_verification=True).read()


def test_a_step_that_goes_back_is_refused_naming_the_steps_and_the_fix(tmp_path: Path) -> None:
    """A per-epoch step counter (`for step, ... in enumerate(loader)`) restarts at 0: then the last
    presentation is the wrong row and a resume drops earlier epochs as replays. `record` refuses it."""
    with CartoLogger(tmp_path, sketch_k=0, sketch_runs=0) as log:
        for step in range(3):
            log.record([step], epoch=0, step=step, loss=[1.0], correct=[True])
        log.record([9], epoch=0, step=2, loss=[1.0], correct=[True])  # one step, twice: gradient accumulation
        with pytest.raises(OptionError, match=r"step 0 comes after step 2; a step must never go back within one "
                                              r"logger .* pass a global step counter"):
            log.record([0], epoch=1, step=0, loss=[1.0], correct=[True])
        log.record([0], epoch=1, step=3, loss=[1.0], correct=[True])  # the global step goes on
    assert read_log(tmp_path).select("epoch", "step").rows() == [(0, 0), (0, 1), (0, 2), (0, 2), (1, 3)]
