"""What finding copies would cost without the training data: a simulation of the log-only alternative.

    python scripts/findings_log_only.py --work /tmp/calib --seeds 0 1     # after findings_calibration.py

The alternative: the shim would log, per presentation, the K smallest 32-bit hashes of the L-grams
under its logged runs of greedy hits (a bottom-K sketch of what the model reproduces: 4K bytes a
presentation, incompressible), and `carto score` would call a sample a copy of a source (a sample
whose `extractable` passes --min-evidence) when their last presentations share a logged hash, no
dataset needed. Simulated here from the baselines that `scripts/findings_calibration.py` trained
(their logs, rows and canaries, same seeds): the hashes are computed from the rows under each
sample's logged runs, as the shim would have; with a reference (the validation rows), hashes that
occur there are dropped first (public). Reports the canary carriers found and the share of
flagged rows that carry a canary, beside what `--data` gets on the same logs (that script's
table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

from carto_cli.io import artifacts, logs, tokens
from carto_cli.score import findings, match

sys.path.insert(0, str(Path(__file__).resolve().parent))
from findings_calibration import baseline, commit  # noqa: E402


def fingerprints(work: Path, k: int, length: int, early_epochs: int = 1) -> dict[int, set[int]]:
    """sample_id -> the k smallest L-gram hashes (low 32 bits) under the runs of its last presentation."""
    rows = tokens.open_tokens(work / "train.parquet")
    data = next(rows.batches(batch_rows=10**9))
    lf = logs.scan(logs.open_logs([work / "logs"]), ["sample_id", "epoch", "step", "hit_runs"])
    last = (lf.filter(pl.col("epoch") >= early_epochs).group_by("sample_id")
            .agg(pl.col("hit_runs").sort_by(["step", "epoch"]).last()).collect())
    out = {}
    for sample_id, runs in last.iter_rows():
        row = data.row(int(sample_id))[int(data.first_target[int(sample_id)]):]
        hashes = [match.window_hashes(row[s:s + n], length) for s, n in zip(runs[0::2], runs[1::2]) if n >= length]
        values = np.unique(np.concatenate(hashes) & np.uint64(0xFFFFFFFF)) if hashes else np.zeros(0, np.uint64)
        out[int(sample_id)] = set(values[:k].tolist())
    return out


def evaluate(seed: int, work: Path, k: int, length: int, reference: bool, min_evidence: float) -> dict:
    _, canaries = baseline(seed, work)
    carriers = {s for c in canaries["canaries"] for s in c["sample_ids"]}
    prints = fingerprints(work, k, length)
    if reference:
        val = next(tokens.open_tokens(work / "val.parquet").batches(batch_rows=10**9))
        public = set((match.window_hashes(val.values, length) & np.uint64(0xFFFFFFFF)).tolist())
        prints = {s: f - public for s, f in prints.items()}
    scores = artifacts.read(work / "scores.parquet", "scores")[0]
    own = "signal" if "signal" in scores.columns else "memorization"
    sources = scores.filter(pl.col(own) >= min_evidence)["sample_id"].to_list()
    index: dict[int, set[int]] = {}
    for sample_id, hashes in prints.items():
        for h in hashes:
            index.setdefault(h, set()).add(sample_id)
    flagged = set().union(*(index[h] for s in sources for h in prints.get(int(s), ())))
    found = len(flagged & carriers)
    return {"seed": seed, "k": k, "bytes": 4 * k, "reference": reference, "sources": len(sources),
            "flagged": len(flagged), "carriers": found / len(carriers), "precision": found / max(1, len(flagged))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="findings_calibration.py's --work")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--k", default="4,8,16", help="hashes logged a presentation")
    parser.add_argument("--length", type=int, default=findings.DEFAULT_MIN_LENGTH, help="L-gram length (tokens)")
    args = parser.parse_args()
    rows = [evaluate(seed, args.work / f"seed{seed}", k, args.length, reference, findings.DEFAULT_MIN_EVIDENCE)
            for seed in args.seeds for reference in (False, True) for k in map(int, args.k.split(","))]
    print(f"# command: python scripts/findings_log_only.py {' '.join(sys.argv[1:])}")
    print(f"# carto commit: {commit()}; L = {args.length} tokens, sources: extractable >= "
          f"{findings.DEFAULT_MIN_EVIDENCE:g} nats")
    print("| seed | hashes logged | bytes a presentation | reference | sources | flagged | canary carriers found "
          "| precision |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['k']} | {r['bytes']} | {'yes' if r['reference'] else 'no'} | {r['sources']:,} | "
              f"{r['flagged']:,} | {r['carriers']:.3f} | {r['precision']:.3f} |")


if __name__ == "__main__":
    main()
