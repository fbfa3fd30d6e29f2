"""The default memorization signal's cost: `carto score` on a log with the shim's sketch, ranked by
`extractable` (the default) against the same command ranked by forget events.

    python benchmarks/bench_signal.py                       # 1M samples x 4 epochs (~1 minute)
    python benchmarks/bench_signal.py --samples 200000 --check

Writes a log shaped as the shim writes it (one part per epoch, ids permuted each epoch, the sketch
columns with the shim's default k = 10 and r = 6, zstd) under /work/bench_data, with random sketches: positions
uniform in a 256-token sequence, losses uniform in [0, 5), runs up to 40 tokens (random values
compress less than real ones: a conservative read cost). Then runs, each in its own process,
alternately `--repeat` times: `carto score LOGS` (extractable) and
`carto score LOGS --memorization forgets`, and prints wall time and peak RSS (wait4) of each and
their ratios; its first lines name the command, the log and its size on disk, the carto_cli that
ran (git commit, "+dirty" when modified) and the load average at the start. `--check` also
compares the kernel (`extract.py`, its loops compiled where built) with the Polars definition of
the signal on the whole log (slow: the definition explodes every early sketch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import DATA_ROOT, carto_source, dir_size_mib, encoding_tag, run_step

from carto_cli.log.writer import write_parquet

CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]


SKETCH_K, SKETCH_R = 10, 6  # the shim's defaults (carto_cli.log.sketch)


def write_log(out: Path, samples: int, epochs: int, *, k: int = SKETCH_K, r: int = SKETCH_R, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)

    def lists(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
        n, width = values.shape
        offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=dtype))

    for epoch in range(epochs):
        ids = rng.permutation(samples).astype(np.int64)
        table = pa.table({
            "sample_id": ids,
            "epoch": np.full(samples, epoch, dtype=np.int32),
            "step": (epoch * samples + np.arange(samples)) // 32,
            "loss": rng.random(samples).astype(np.float32) * 4,
            "correct": rng.random(samples) < 0.5,
            "top_pos": lists(rng.integers(0, 256, (samples, k)).astype(np.uint16), pa.uint16()),
            "top_loss": lists((rng.random((samples, k)) * 5).astype(np.float16), pa.float16()),
            "hit_runs": lists(rng.integers(0, 40, (samples, 2 * r)).astype(np.uint16), pa.uint16()),
        })
        # as the shim writes parts (its encodings, checksums), in row groups of 1M rows
        write_parquet(table, out / f"part-e{epoch}.parquet", row_group_size=1_000_000)


def check(logs: Path) -> int:
    """Samples where the kernel (extract.py) and the Polars definition disagree."""
    import polars as pl

    from carto_cli.io.logs import open_logs, scan
    from carto_cli.score import extract, signals

    logset = open_logs([logs])
    lf = scan(logset, ["sample_id", "epoch", "step", "loss", "top_pos", "top_loss", "hit_runs"])
    want = signals.extractable(lf, early_epochs=2).filter(pl.col("value").is_not_null())
    got = extract.extractable(logset, early_epochs=2, drop_nonfinite=True)
    joined = want.join(got, on="sample_id", how="full", coalesce=True, suffix="_np")
    return joined.filter(pl.col("value").ne_missing(pl.col("value_np"))).height


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--logs", type=Path, help="the sketched log (generated there if missing)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--write-log", type=Path, help=argparse.SUPPRESS)  # the child that writes the log
    args = ap.parse_args()
    if args.write_log:
        write_log(args.write_log, args.samples, args.epochs, k=SKETCH_K, r=SKETCH_R)
        return 0
    # the sketch's shape and the writer's encodings are in the name, so a log written with older
    # defaults is not reused
    logs = args.logs or DATA_ROOT / f"sketch-k{SKETCH_K}r{SKETCH_R}-{encoding_tag()}-{args.samples}x{args.epochs}"
    if not logs.exists():
        # in a child process: the runs are forked from this one, and wait4's peak RSS of a forked
        # child starts from its parent's, so a parent grown by writing the log would inflate them
        subprocess.run([sys.executable, __file__, "--write-log", str(logs), "--samples", str(args.samples),
                        "--epochs", str(args.epochs)], check=True)
    load, on_disk = os.getloadavg()[0], dir_size_mib(logs)
    print(f"command: python benchmarks/bench_signal.py {' '.join(sys.argv[1:])}")
    print(f"log: {logs} ({on_disk:,.1f} MiB on disk); carto: {json.dumps(carto_source())}; load {load:.2f}")
    runs: dict[str, list[dict]] = {"extractable": [], "forgets": []}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {name: Path(tmp) / f"{name}.parquet" for name in runs}
        for _ in range(args.repeat):
            for name, extra in (("extractable", []), ("forgets", ["--memorization", "forgets"])):
                argv = [*CARTO, "score", str(logs), "--out", str(outs[name]), *extra]
                runs[name].append(run_step(name, argv, args.timeout, tail=2, width=12))
        ok = all(r["status"] == "ok" for rs in runs.values() for r in rs)
        import polars as pl

        same_state = ok and pl.read_parquet(outs["extractable"]).drop("memorization", "quadrant").equals(
            pl.read_parquet(outs["forgets"]).drop("memorization", "quadrant"))
    best = {name: min(r["wall_s"] for r in rs) for name, rs in runs.items()}
    rss = {name: max(r["peak_rss_mib"] for r in rs) for name, rs in runs.items()}
    result = {
        "samples": args.samples, "epochs": args.epochs, "repeat": args.repeat,
        "log_on_disk_mib": round(on_disk, 1), "load_avg_1m_at_start": round(load, 2),
        "best_wall_s": best, "median_wall_s": {n: statistics.median(r["wall_s"] for r in rs) for n, rs in runs.items()},
        "peak_rss_mib": rss,
        "time_ratio": best["extractable"] / best["forgets"], "rss_ratio": rss["extractable"] / rss["forgets"],
        "other_columns_identical": same_state,
    }
    if args.check:
        result["kernel_vs_definition_mismatches"] = check(logs)
    print(f"extractable / forgets: time {result['time_ratio']:.2f} (best of {args.repeat}), "
          f"peak RSS {result['rss_ratio']:.2f}; the other score columns identical: {same_state}")
    if args.check:
        print(f"kernel vs Polars definition: {result['kernel_vs_definition_mismatches']} mismatching samples")
    print(json.dumps(result))
    return 0 if ok and same_state and not result.get("kernel_vs_definition_mismatches") else 1


if __name__ == "__main__":
    sys.exit(main())
