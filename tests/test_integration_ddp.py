"""Distributed logging: the padding duplicates of torch's DistributedSampler and of Accelerate's
sharding are masked, so each sample counts once per epoch over all ranks.

Every rank of a sampler is simulated in one process first (the real samplers and the real loaders
`accelerate.data_loader.prepare_data_loader` builds for a given rank), over many dataset lengths,
world sizes and batch sizes; then examples/torchrun_train.py runs for real on two gloo processes
under torchrun, with DDP and with Accelerate, and its log is checked row by row and scored.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from typer.testing import CliRunner

from carto_cli.cli import app
from carto_cli.errors import OptionError
from carto_cli.integrations.distributed import IndexedDataset, batch_keep_mask, padding_keep_mask, sharding_of
from carto_cli.log import schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "torchrun_train.py"

torch.set_num_threads(1)


def ddp_loader(n: int, world: int, rank: int, batch: int, *, epoch: int = 0, drop_last: bool = False) -> DataLoader:
    data = IndexedDataset(list(range(n)))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=7, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return DataLoader(data, batch_size=batch, sampler=sampler)


def accelerate_loader(n: int, world: int, rank: int, batch: int, *, shuffle: bool = True, **options) -> DataLoader:
    """The loader `accelerator.prepare` gives rank `rank` (the same shuffle on every rank, as Accelerate syncs it)."""
    base = DataLoader(IndexedDataset(list(range(n))), batch_size=batch, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(3))
    return prepare_data_loader(base, num_processes=world, process_index=rank, put_on_device=False, **options)


def epoch_ids(loaders: list) -> tuple[collections.Counter, collections.Counter]:
    """Over every rank's loader: (ids as loaded, ids kept by the mask)."""
    loaded, kept = collections.Counter(), collections.Counter()
    for loader in loaders:
        for i, (ids, _) in enumerate(loader):
            keep = batch_keep_mask(loader, i, len(ids))
            assert keep.dtype == torch.bool and keep.shape == ids.shape
            loaded.update(ids.tolist())
            kept.update(ids[keep].tolist())
    return loaded, kept


CASES = list(itertools.product([1, 5, 7, 16, 23, 45], [1, 2, 3, 4], [1, 3, 8]))


@pytest.mark.parametrize(("n", "world", "batch"), CASES)
def test_distributed_sampler_each_sample_once_per_epoch(n: int, world: int, batch: int) -> None:
    for epoch in (0, 1):
        loaded, kept = epoch_ids([ddp_loader(n, world, r, batch, epoch=epoch) for r in range(world)])
        assert kept == collections.Counter(range(n))
        padding = -n % world  # DistributedSampler repeats this many samples
        assert sum(loaded.values()) == n + padding  # without the mask they would be logged twice
        assert (max(loaded.values()) > 1) == (padding > 0)


def test_distributed_sampler_drop_last_pads_nothing() -> None:
    loaded, kept = epoch_ids([ddp_loader(23, 4, r, 3, drop_last=True) for r in range(4)])
    assert kept == loaded and sum(kept.values()) == 20 and max(kept.values()) == 1


@pytest.mark.parametrize(("n", "world", "batch", "mode"), [
    (*case, mode) for case in CASES for mode in ("even", "split", "uneven")
    if mode != "split" or case[2] % case[1] == 0  # split_batches: the batch divides among the ranks
])
def test_accelerate_sharding_each_sample_once_per_epoch(n: int, world: int, batch: int, mode: str) -> None:
    options = {"split_batches": mode == "split", "even_batches": mode != "uneven"}
    loaded, kept = epoch_ids([accelerate_loader(n, world, r, batch, **options) for r in range(world)])
    assert kept == collections.Counter(range(n))
    if mode == "uneven":
        assert loaded == kept  # even_batches=False repeats nothing
    elif world > 1 and n % (batch * world if mode == "even" else batch):
        assert sum(loaded.values()) > n  # Accelerate repeated samples: the mask is what removes them


def test_accelerate_resumed_loader_counts_the_skipped_batches() -> None:
    full = accelerate_loader(45, 2, 1, 8, shuffle=False)
    resumed = skip_first_batches(full, 2)
    rows = [(ids.tolist(), batch_keep_mask(resumed, i, len(ids)).tolist()) for i, (ids, _) in enumerate(resumed)]
    expected = [(ids.tolist(), batch_keep_mask(full, i, len(ids)).tolist()) for i, (ids, _) in enumerate(full)][2:]
    assert rows == expected and rows[-1][1] == [True] * 5 + [False] * 3  # 45 = 5*8 + 5: rank 1's last batch


def test_padding_keep_mask_by_local_position() -> None:
    data = list(range(5))
    rank0 = DistributedSampler(data, num_replicas=2, rank=0)
    rank1 = DistributedSampler(data, num_replicas=2, rank=1)
    assert padding_keep_mask(rank0, [0, 1, 2]).tolist() == [True, True, True]
    assert padding_keep_mask(rank1, torch.tensor([0, 1, 2])).tolist() == [True, True, False]  # position 5 >= 5
    assert sharding_of(DataLoader(data, batch_size=2)).kind == "none"
    assert batch_keep_mask(DataLoader(data, batch_size=2), 2, 1).tolist() == [True]


def test_indexed_dataset() -> None:
    data = IndexedDataset(["a", "b", "c"])
    assert len(data) == 3 and data[1] == (1, "b")
    assert IndexedDataset(["a", "b"], sample_ids=[10, 20])[1] == (20, "b")
    ids, items = next(iter(DataLoader(IndexedDataset(torch.arange(6).view(3, 2)), batch_size=3)))
    assert ids.tolist() == [0, 1, 2] and items.tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(OptionError, match=r"^IndexedDataset: sample_ids has 1 entries but the dataset 2; pass one"):
        IndexedDataset(["a", "b"], sample_ids=[1])


def test_bad_input_is_one_line() -> None:
    with pytest.raises(OptionError) as info:
        padding_keep_mask(range(3), [0])
    assert str(info.value) == (
        "padding_keep_mask: sampler must be a torch.utils.data.DistributedSampler, got range; "
        "for a whole DataLoader (also Accelerate's) use batch_keep_mask(loader, batch_index, n)")
    with pytest.raises(OptionError) as info:
        batch_keep_mask(ddp_loader(10, 2, 0, 4), 0, 5)
    assert str(info.value) == ("batch_keep_mask: the batch has 5 rows but this rank's batches hold at most 4; "
                               "pass n = the number of rows of the batch (len(ids))")
    with pytest.raises(OptionError, match=r"^batch_keep_mask: batch_index \(-1\) and n \(2\) must be >= 0$"):
        batch_keep_mask(ddp_loader(10, 2, 0, 4), -1, 2)
    sampler = DistributedSampler(list(range(10)), num_replicas=2, rank=0)

    class Growing:  # a batch sampler over a DistributedSampler with batches of 1, 2, 3... samples
        def __init__(self, sampler):
            self.sampler = sampler

        def __iter__(self):
            indices = list(self.sampler)
            lo, size = 0, 1
            while lo < len(indices):
                yield indices[lo:lo + size]
                lo, size = lo + size, size + 1

    custom = DataLoader(list(range(10)), batch_sampler=Growing(sampler))
    with pytest.raises(OptionError, match=r"^batch_keep_mask: the loader has no fixed batch size"):
        batch_keep_mask(custom, 0, 2)
    rank1 = DistributedSampler(list(range(9)), num_replicas=2, rank=1)  # 4 samples and a repeat
    loader = DataLoader(list(range(9)), batch_sampler=BatchSampler(rank1, batch_size=2, drop_last=False))
    assert [batch_keep_mask(loader, i, len(b)).tolist() for i, b in enumerate(loader)] == [
        [True, True], [True, True], [False]]  # a BatchSampler over a DistributedSampler is understood
    dispatcher = prepare_data_loader(DataLoader(list(range(10)), batch_size=2), num_processes=2, process_index=0,
                                     dispatch_batches=True, put_on_device=True, device=torch.device("cpu"))
    with pytest.raises(OptionError, match=r"^batch_keep_mask: Accelerate's dispatching loader \(dispatch_batches"):
        batch_keep_mask(dispatcher, 0, 1)


# ------------------------------------------------------------------ real runs under torchrun


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_example(tmp_path: Path, *extra: str, epochs: int = 3) -> Path:
    out = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(EXAMPLE), "--out", str(out), "--epochs", str(epochs), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.startswith(f"logged 2 rank(s) into {out}; next:\n  carto logs summary {out}\n")
    return out


def check_log(out: Path, tmp_path: Path, *, rows_per_rank: list[int], epochs: int) -> pl.DataFrame:
    """Both ranks wrote parts (file metadata and rank column agree), each sample once per epoch, and
    `carto score` sees every sample `epochs` times."""
    parts = sorted(out.glob("*.parquet"))
    ranks = {int(pq.read_schema(p).metadata[schema.META_RANK.encode()]) for p in parts}
    assert ranks == {0, 1}
    log = pl.concat([pl.read_parquet(p).with_columns(pl.lit(str(p)).alias("file")) for p in parts])
    assert sorted(log.group_by("rank").len().rows()) == [(0, rows_per_rank[0]), (1, rows_per_rank[1])]
    per_epoch = log.group_by("sample_id", "epoch").len()
    assert per_epoch.height == 45 * epochs and (per_epoch["len"] == 1).all()
    result = CliRunner().invoke(app, ["score", str(out), "--out", str(tmp_path / "scores.parquet")])
    assert result.exit_code == 0, result.output
    scores = pl.read_parquet(tmp_path / "scores.parquet").sort("sample_id")
    assert scores["sample_id"].to_list() == list(range(45)) and (scores["n_seen"] == epochs).all()
    return log


def test_torchrun_ddp_example_logs_each_sample_once_per_epoch(tmp_path: Path) -> None:
    """45 samples, batches of 8, 2 ranks: DistributedSampler gives rank 1 23 samples a epoch, the
    last a repeat of one of rank 0's; the logged rows are exactly what each rank's sampler yields
    less that repeat, in order."""
    out = torchrun_example(tmp_path)
    log = check_log(out, tmp_path, rows_per_rank=[3 * 23, 3 * 22], epochs=3)
    data = IndexedDataset(list(range(45)))
    for rank, epoch in itertools.product((0, 1), range(3)):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)  # the example's
        sampler.set_epoch(epoch)
        loaded = list(sampler)
        keep = padding_keep_mask(sampler, range(len(loaded)))
        logged = log.filter((pl.col("rank") == rank) & (pl.col("epoch") == epoch))["sample_id"].to_list()
        assert logged == [i for i, k in zip(loaded, keep.tolist()) if k]
        if rank == 1:  # without the mask, this epoch's last sample would have been logged a second time
            assert loaded[-1] in log.filter((pl.col("rank") == 0) & (pl.col("epoch") == epoch))["sample_id"]
            assert len(loaded) == 23 and len(logged) == 22


def test_torchrun_accelerate_example_logs_each_sample_once_per_epoch(tmp_path: Path) -> None:
    """The same example on Accelerate (two gloo processes, `prepare` shards the loader): rank 0 gets
    batches 0, 2, 4 (24 samples), rank 1 batches 1, 3 and the short 5th (5 samples) filled up with 3
    repeats from the start of the epoch, which the mask leaves out."""
    out = torchrun_example(tmp_path, "--accelerate", epochs=2)
    log = check_log(out, tmp_path, rows_per_rank=[2 * 24, 2 * 21], epochs=2)
    assert log.filter(pl.col("rank") == 1)["step"].n_unique() == 2 * 3  # 3 batches a epoch, all logged
