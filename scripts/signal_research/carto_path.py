"""The prototype's recorded runs through carto's own path: the sketch as the shim computes it
(`carto_cli.log.sketch`, default k and r), written as a log, scored by `score_logs` at its defaults
(the `extractable` signal) and by the paper's forget events, ranked against the canary carriers.

    PYTHONPATH=. python scripts/signal_research/carto_path.py RUN_DIR [RUN_DIR ...] [--early-epochs 1 2]

RUN_DIR holds `record.npz` (loss[E, N, T] float16, hit[E, N, T] bool, step[E, N]: every position of
every presentation, from `train_record.py`) and `meta.json` (the canaries, their carriers and which
the baseline extracted). Prints a Markdown table: carrier AUC (ties half) and the share of carriers
among the top 10% by `carto prune --frac 0.1`'s order, for all carriers and for the carriers of
extracted canaries; the same definitions as `candidates.py`, except that the top 10% is carto's
own prune order rather than a random tie-break.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy import stats

from carto_cli import score_logs
from carto_cli.export import manifests
from carto_cli.log import schema, sketch


def write_log(record: dict, out: Path) -> None:
    loss, hit, step = record["loss"], record["hit"], record["step"]
    E, N, T = loss.shape
    out.mkdir(parents=True, exist_ok=True)
    for e in range(E):
        tok = torch.from_numpy(loss[e].astype(np.float32))
        valid = torch.isfinite(tok)
        positions, top = sketch.top_losses(torch, tok.nan_to_num(0.0), valid, sketch.DEFAULT_TOP_K)
        runs = sketch.hit_runs(torch, torch.from_numpy(hit[e]), valid, sketch.DEFAULT_RUNS)
        token_acc = (hit[e] & valid.numpy()).sum(1) / valid.numpy().sum(1)

        def lists(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
            width = values.shape[1]
            offsets = pa.array(np.arange(0, (N + 1) * width, width, dtype=np.int32))
            return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=dtype))

        table = pa.table(
            {
                schema.SAMPLE_ID: np.arange(N, dtype=np.int64),
                schema.EPOCH: np.full(N, e, dtype=np.int32),
                schema.STEP: step[e].astype(np.int64),
                schema.LOSS: np.nanmean(loss[e].astype(np.float32), axis=1),
                schema.CORRECT: token_acc >= 0.5,
                schema.TOKEN_ACC: token_acc.astype(np.float32),
                schema.TOP_POS: lists(positions.numpy().astype(np.uint16), pa.uint16()),
                schema.TOP_LOSS: lists(top.numpy(), pa.float16()),
                schema.HIT_RUNS: lists(runs.numpy().astype(np.uint16), pa.uint16()),
            }
        )
        pq.write_table(table, out / f"part-e{e}.parquet")


def rank(scores: pl.DataFrame, carriers: np.ndarray, extracted: np.ndarray) -> dict:
    n = scores.height
    memo = scores.sort("sample_id")["memorization"].to_numpy().astype(float)
    memo = np.where(np.isnan(memo), -np.inf, memo)  # null ranks last
    pruned = manifests.prune_manifest(scores, frac=0.1).filter(~pl.col("keep"))["sample_id"].to_numpy()
    top = np.zeros(n, dtype=bool)
    top[pruned] = True
    others = ~carriers

    def auc(pos: np.ndarray) -> float:
        u = stats.mannwhitneyu(memo[pos], memo[others]).statistic
        return float(u / (pos.sum() * others.sum()))

    out = {"auc": auc(carriers), "rec10": float(top[carriers].mean())}
    if extracted.any():
        out |= {"auc_ext": auc(extracted), "rec10_ext": float(top[extracted].mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--early-epochs", type=int, nargs="+", default=[2])
    args = ap.parse_args()
    print(f"sketch: k = {sketch.DEFAULT_TOP_K}, r = {sketch.DEFAULT_RUNS}\n")
    print("| run | early epochs | signal | carrier AUC | carriers in top 10% | AUC (extracted) | top 10% (extracted) |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        meta = json.loads((run / "meta.json").read_text())
        record = dict(np.load(run / "record.npz"))
        n = record["loss"].shape[1]
        carriers, extracted = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for canary in meta["canaries"]:
            carriers[canary["sample_ids"]] = True
            if canary["extracted"]:
                extracted[canary["sample_ids"]] = True
        with tempfile.TemporaryDirectory() as tmp:
            write_log(record, Path(tmp) / "logs")
            for early in args.early_epochs:
                for signal in ("auto", "forgets"):
                    scores = score_logs(Path(tmp) / "logs", early_epochs=early, memorization=signal)
                    r = rank(scores, carriers, extracted)
                    name = "extractable (default)" if signal == "auto" else "forget events (paper)"
                    ext = f"{r['auc_ext']:.3f} | {r['rec10_ext']:.2f}" if "auc_ext" in r else "n/a | n/a"
                    print(f"| {run.name} | {early} | {name} | {r['auc']:.3f} | {r['rec10']:.2f} | {ext} |", flush=True)


if __name__ == "__main__":
    main()
