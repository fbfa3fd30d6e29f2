"""Generate the reference scoring workload: synthetic carto training logs at scale.

    python benchmarks/make_bench_logs.py                       # 10,000,000 samples x 4 epochs = 40M rows
    python benchmarks/make_bench_logs.py --samples 200000 --out /work/bench_data/small

What is written (default directory /work/bench_data/logs-<samples>x<epochs>, outside the repo):

- A simulated 2-rank data-parallel run: every epoch is a fresh shuffle of all samples and rank r
  gets every other sample of it (like torch's DistributedSampler), so one part file per rank per
  epoch, named like the shim's parts (`part-r00000-<run>-000000.parquet`).
- `step` is the global optimizer step: batches of `--batch-size` (512) samples per rank, numbered
  across epochs, so steps increase with epoch and both ranks share step numbers.
- Parts have exactly the shim's schema (`carto_cli.log.schema.LOG_SCHEMA`, with its `carto.*` metadata):
  sample_id int64, epoch int32, step int64, loss float32, correct bool, rank int32, and the optional
  token_acc / tail_loss / n_tokens columns all null (what the shim writes when it is not given
  logits). zstd compression, one row group per 2^20 rows (pyarrow's default, as the shim gets).
- Loss and correctness: each sample has an initial loss in [0.5, 4] nats and a learning rate, so
  its loss falls as L0 * exp(-rate * epoch), times log-normal noise (sigma 0.25) per presentation;
  2% are noisy-label samples whose loss hovers around the threshold. correct = loss < 1.0.
  With 4 epochs about 3% of samples have a forget event, ~9% are never learned.

Every value is a hash of (seed, sample_id, epoch), and the shuffles come from per-epoch seeds, so
the output is identical for a seed whatever the chunk size. Memory stays bounded: the per-epoch
permutation (8 bytes per sample) plus one chunk of rows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import default_logs_dir, dir_size_mib

from carto_cli import __version__
from carto_cli.log import schema

WORLD_SIZE = 2
ROW_GROUP = 1 << 20  # pyarrow's default maximum row group length
CORRECT_BELOW = 1.0  # nats: a presentation counts as learned when its loss is below this
NOISE_SIGMA = 0.25
NOISY_SHARE = 0.02

# Independent hash streams (one per random quantity).
_INITIAL, _RATE, _NOISY, _NOISE_A, _NOISE_B = range(5)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(sample_ids: np.ndarray, seed: int, stream: int, epoch: int = 0) -> np.ndarray:
    """A uniform [0, 1) value per sample id, fixed by (seed, stream, epoch)."""
    key = _mix(np.array([seed * 1_000_003 + stream * 1009 + epoch], dtype=np.uint64))
    bits = _mix(sample_ids.astype(np.uint64) ^ key)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def simulate(sample_ids: np.ndarray, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Loss (float32) and correct (bool) of each sample's presentation in `epoch`."""
    initial = 0.5 + 3.5 * _uniform(sample_ids, seed, _INITIAL)
    rate = 0.2 + 1.0 * _uniform(sample_ids, seed, _RATE)
    noisy = _uniform(sample_ids, seed, _NOISY) < NOISY_SHARE
    trend = np.where(noisy, CORRECT_BELOW, initial * np.exp(-rate * epoch))
    sigma = np.where(noisy, 0.35, NOISE_SIGMA)
    # Box-Muller: a standard normal from two uniforms.
    u1 = 1.0 - _uniform(sample_ids, seed, _NOISE_A, epoch)  # (0, 1]
    u2 = _uniform(sample_ids, seed, _NOISE_B, epoch)
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    loss = (trend * np.exp(sigma * normal)).astype(np.float32)
    return loss, loss < CORRECT_BELOW


def part_schema(run_id: str, rank: int) -> pa.Schema:
    """The shim's part schema and metadata."""
    meta = {
        schema.META_VERSION: __version__,
        schema.META_RANK: str(rank),
        schema.META_WORLD_SIZE: str(WORLD_SIZE),
        schema.META_RUN_ID: run_id,
        schema.META_STARTED: "1970-01-01T00:00:00+00:00",
        schema.META_CORRECT_RULE: "bench",
        schema.META_TAIL_K: "0",
    }
    return schema.LOG_SCHEMA.with_metadata(meta)


def write_part(path: Path, ids: np.ndarray, *, epoch: int, rank: int, first_step: int,
               batch_size: int, seed: int, run_id: str) -> None:
    """One rank's presentations of one epoch, in `ids` order, written in row-group chunks."""
    part = part_schema(run_id, rank)
    tmp = path.with_name(f".{path.name}{schema.TMP_SUFFIX}")
    with pq.ParquetWriter(tmp, part, compression="zstd") as writer:
        for start in range(0, len(ids), ROW_GROUP):
            chunk = np.ascontiguousarray(ids[start:start + ROW_GROUP])
            n = len(chunk)
            loss, correct = simulate(chunk, epoch, seed)
            position = np.arange(start, start + n, dtype=np.int64)
            columns = {
                schema.SAMPLE_ID: pa.array(chunk, pa.int64()),
                schema.EPOCH: pa.array(np.full(n, epoch, dtype=np.int32)),
                schema.STEP: pa.array(first_step + position // batch_size),
                schema.LOSS: pa.array(loss),
                schema.CORRECT: pa.array(correct),
                schema.RANK: pa.array(np.full(n, rank, dtype=np.int32)),
            }
            arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in part]
            writer.write_table(pa.Table.from_arrays(arrays, schema=part), row_group_size=ROW_GROUP)
    tmp.replace(path)


def generate(out: Path, *, samples: int, epochs: int, seed: int, batch_size: int) -> int:
    """Write every part; returns the number of rows."""
    run_id = f"bench{seed}"
    per_rank = -(-samples // WORLD_SIZE)
    steps_per_epoch = -(-per_rank // batch_size)
    rows = 0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(samples)
        for rank in range(WORLD_SIZE):
            ids = order[rank::WORLD_SIZE]
            path = out / f"part-r{rank:05d}-{run_id}-{epoch:06d}{schema.PART_SUFFIX}"
            write_part(path, ids, epoch=epoch, rank=rank, first_step=epoch * steps_per_epoch,
                       batch_size=batch_size, seed=seed, run_id=run_id)
            rows += len(ids)
        print(f"  epoch {epoch}: {WORLD_SIZE} parts", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default /work/bench_data/logs-<samples>x<epochs>); replaced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=512, help="samples per rank per optimizer step")
    args = parser.parse_args()
    if args.samples < 1 or args.epochs < 1 or args.batch_size < 1:
        parser.error("--samples, --epochs and --batch-size must be >= 1")

    out = args.out or default_logs_dir(args.samples, args.epochs)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    rows = generate(out, samples=args.samples, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size)
    elapsed = time.perf_counter() - start
    print(f"wrote {rows:,} rows ({args.samples:,} samples x {args.epochs} epochs, {WORLD_SIZE} ranks) "
          f"to {out}: {dir_size_mib(out):,.1f} MiB in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
