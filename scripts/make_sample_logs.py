"""Regenerate `sample_logs/`: a real small training run, logged per sample with carto's shim.

    python scripts/make_sample_logs.py              # the logs and the data
    python scripts/make_sample_logs.py --data-only  # sample_data/ alone (no training: seconds)

Trains a tiny byte-level GPT (`carto_cli.experiment.tinygpt`) on CPU, on text that ships with CPython
(`carto_cli.experiment.corpus`, PSF License), records every sample's loss and correctness at every presentation
with `CartoLogger`, then writes `sample_logs/README.md` with the settings, versions, measured wall
time and a summary of the logs (per-epoch share correct, forgetting events). Old
`sample_logs/*.parquet` parts are deleted first. Also writes `sample_data/`: the training and
held-out rows the logs were made from (`input_ids`, one token per byte, and `text`), so that
`carto score sample_logs/ --data sample_data/train.parquet --reference sample_data/val.parquet`
finds what the model memorized. Needs torch (not with --data-only); no network.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import polars as pl
import torch

from carto_cli import CartoLogger, __version__
from carto_cli.engines import local
from carto_cli.experiment.corpus import cpython_text, to_bytes_samples, train_val_split
from carto_cli.experiment.tinygpt import GPT, GPTConfig, eval_loss, train_epochs
from carto_cli.io import logs as carto_logs

OUT_DIR = Path(__file__).resolve().parent.parent / "sample_logs"
DATA_DIR = OUT_DIR.parent / "sample_data"

# data: ~2,000 training samples of 128 bytes (+1 shifted target byte), 10% held out
SAMPLE_LEN = 128
N_SAMPLES = 2_250
VAL_FRAC = 0.1
# model and training
MODEL = GPTConfig(vocab_size=256, block_size=SAMPLE_LEN, n_layer=2, n_head=4, n_embd=64)
EPOCHS = 10
BATCH_SIZE = 8
LR = 5e-3
WARMUP_FRAC = 0.05  # linear warm-up over this share of the steps, then cosine decay ...
MIN_LR_FRAC = 0.1  # ... down to this share of LR
WEIGHT_DECAY = 0.1
SEED = 0
THREADS = 2
# logging: small parts so that the sample logs have several
ROWS_PER_PART = 3_000


def main() -> None:
    text = cpython_text(N_SAMPLES * (SAMPLE_LEN + 1))
    train, val = train_val_split(to_bytes_samples(text, SAMPLE_LEN), VAL_FRAC, SEED)
    write_sample_data(train, val)
    if "--data-only" in sys.argv[1:]:
        return
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    model = GPT(MODEL)

    OUT_DIR.mkdir(exist_ok=True)
    for old in [*OUT_DIR.glob("*.parquet"), *OUT_DIR.glob(".*.tmp")]:
        old.unlink()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    with CartoLogger(OUT_DIR, rows_per_part=ROWS_PER_PART, rank=0) as log:
        stats = train_epochs(
            model,
            train,
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            lr=LR,
            seed=SEED,
            logger=log,
            warmup_frac=WARMUP_FRAC,
            min_lr_frac=MIN_LR_FRAC,
            weight_decay=WEIGHT_DECAY,
            progress=_progress,
        )
    wall = time.perf_counter() - t0
    print(file=sys.stderr)

    logs = pl.read_parquet(sorted(OUT_DIR.glob("*.parquet")))
    run = {
        "text_bytes": len(text.encode("utf-8")),
        "n_train": len(train),
        "n_val": len(val),
        "n_params": model.num_params(),
        "val_loss": eval_loss(model, val),
        "wall_s": wall,
        "load": load,
        **stats,
    }
    readme = render_readme(run, logs, parts=sorted(OUT_DIR.glob("*.parquet")))
    (OUT_DIR / "README.md").write_text(readme)
    print(readme, file=sys.stderr)


def write_sample_data(train, val) -> None:
    """sample_data/{train,val}.parquet: row i of train is sample_id i; `input_ids` the row's bytes
    (the tokens the model was fed: x = row[:-1], y = row[1:], so logged position j is token j + 1),
    `text` the same bytes as UTF-8 (a window may cut a character: replaced)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    DATA_DIR.mkdir(exist_ok=True)
    for name, rows in (("train", train), ("val", val)):
        table = pa.table({"input_ids": pa.array(rows.tolist(), type=pa.list_(pa.uint8())),
                          "text": [bytes(row.tolist()).decode("utf-8", errors="replace") for row in rows]})
        pq.write_table(table, DATA_DIR / f"{name}.parquet", compression="zstd")


def _progress(step: int, total: int) -> None:
    if step % 50 == 0 or step == total:
        print(f"\rstep {step}/{total}", end="", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- summaries


def per_epoch(logs: pl.DataFrame) -> pl.DataFrame:
    """One row per epoch: share of rows with correct=True, mean loss, mean token accuracy."""
    return (
        logs.group_by("epoch")
        .agg(
            correct_share=pl.col("correct").mean(),
            mean_loss=pl.col("loss").mean(),
            mean_token_acc=pl.col("token_acc").mean(),
        )
        .sort("epoch")
    )


def per_sample() -> pl.DataFrame:
    """One row per sample, scored by carto itself (`carto_cli.score.scoring`, defaults): forgetting events
    (correct at one presentation, incorrect at the next; Toneva et al. 2019), and whether it was
    correct at any / every presentation."""
    scores = local.score(carto_logs.open_logs([OUT_DIR])).scores
    return scores.select(
        "sample_id",
        "forget_events",
        ever_correct=pl.col("ever_learned"),
        always_correct=pl.col("n_correct") == pl.col("n_seen"),
    )


def render_readme(run: dict, logs: pl.DataFrame, parts: list[Path]) -> str:
    """The README of `sample_logs/`: how the logs were made, their licence, and what is in them."""
    epochs = per_epoch(logs)
    samples = per_sample()
    forgets = samples["forget_events"].value_counts().sort("forget_events")
    n_ever, n_always = samples["ever_correct"].sum(), samples["always_correct"].sum()
    size_kib = sum(p.stat().st_size for p in parts) / 1024
    py, n_epochs = platform.python_version(), logs["epoch"].n_unique()
    epoch_rows = "\n".join(
        f"| {e} | {share:.3f} | {loss:.3f} | {acc:.3f} |"
        for e, share, loss, acc in epochs.iter_rows()
    )
    forget_rows = "\n".join(f"| {k} | {n} |" for k, n in forgets.iter_rows())
    return f"""# Sample logs

A real, small training run logged with carto's shim (`CartoLogger`): {logs.height:,} rows, one
per presentation of each of {samples.height:,} training samples over {n_epochs} epochs, in
{len(parts)} Parquet parts ({size_kib:.0f} KiB in all). Regenerate them (old parts are deleted
first; {run["wall_s"]:.0f} s here, see below) with:

    python scripts/make_sample_logs.py

## How they were made

- **Corpus**: {run["text_bytes"]:,} bytes of text that ships with CPython {py}: half from the
  pydoc topics (`pydoc_data.topics`), half from the standard library's own `.py` files in sorted
  path order, without tests and idlelib (`carto_cli.experiment.corpus.cpython_text`). Cut into
  non-overlapping byte windows of {SAMPLE_LEN} + 1 bytes: {run["n_train"]:,} training samples
  (`sample_id` = row index) and {run["n_val"]:,} held out (seed {SEED}). Byte vocabulary (256),
  no tokenizer.
- **Model**: a tiny GPT (`carto_cli.experiment.tinygpt`): {MODEL.n_layer} layers, {MODEL.n_head} heads,
  n_embd {MODEL.n_embd}, block {MODEL.block_size}, {run["n_params"]:,} parameters.
- **Training**: {EPOCHS} epochs, batch {BATCH_SIZE}, {run["steps"]:,} steps, AdamW lr {LR:g}
  (linear warm-up over {WARMUP_FRAC:.0%} of the steps, cosine decay to {MIN_LR_FRAC:.0%} of it),
  weight decay {WEIGHT_DECAY:g}, seed {SEED}, CPU with {THREADS} threads. Each row's loss and
  correctness come from the training forward pass of its step, before that step's update.
  `correct` is the shim's default rule: greedy token accuracy >= 0.5, given the true prefix.
- **Versions**: Python {py}, torch {torch.__version__}, polars {pl.__version__},
  carto {__version__}.
- **Measured**: {run["wall_s"]:.1f} s wall time for training and logging,
  {run["tokens_per_s"]:,.0f} tokens/s ({platform.machine()}, {os.cpu_count()} CPUs, 1-minute load
  average {run["load"]:.2f} at the start; other work on the machine slows the run down).
  Final train loss {run["final_train_loss"]:.3f} nats/byte (mean over the last epoch),
  held-out loss {run["val_loss"]:.3f}.

The same Python, torch and CPU give the same numbers; another Python version gives another
corpus, and another torch or CPU may change the last digits and so a few samples' `correct`.
Part names and the Parquet metadata carry the run id, the start time and the host name.

## What is in them

| epoch | share correct | mean loss | mean token acc |
|------:|--------------:|----------:|---------------:|
{epoch_rows}

Forgetting events per sample (correct at one epoch, incorrect at the next):

| forget events | samples |
|--------------:|--------:|
{forget_rows}

{n_ever:,} samples are correct at some epoch, {n_always:,} at every epoch, and
{samples.height - n_ever:,} never.

## Licence

The samples were cut from CPython's own documentation and standard library, copyright the
Python Software Foundation, under the PSF License Agreement
(https://docs.python.org/3/license.html). These logs hold only per-sample numbers (ids, losses,
accuracies), not the text; `cpython_text` reads it from the corpus shipped in `carto_cli/experiment/data/`.
"""


if __name__ == "__main__":
    main()
