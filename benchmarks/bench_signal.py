"""The default memorization signal's cost: `carto score` on a log with the shim's sketch, ranked by
`extractable` (the default), against the same command ranked by forget events and against the
DuckDB query an expert writes for the same columns (`contenders.py duckdb-sketch`).

    python benchmarks/bench_signal.py                       # 1M samples x 4 epochs (~1 minute)
    python benchmarks/bench_signal.py --samples 200000 --check
    python benchmarks/bench_signal.py --samples 10000000 --no-duckdb

Writes a log shaped as the shim writes it (one part per epoch, ids permuted each epoch, the sketch
columns with the shim's default k = 10 and r = 6, the shim's encodings: `writer.write_parquet`,
row groups of 1M rows) under /work/bench_data, named by the sketch and a digest of the encodings,
with random sketches: positions uniform in a 256-token sequence, losses uniform in [0, 5), runs up
to 40 tokens (random values compress less than real ones: a conservative read cost). Then runs,
each in its own process, alternately `--repeat` times: `carto score LOGS` (extractable),
`carto score LOGS --memorization forgets` and (unless `--no-duckdb`) the DuckDB query, and prints
wall time, CPU time and peak RSS (wait4) of each and the ratios of issue 25's goals (best wall and
CPU of the rounds, largest peak RSS): extractable / forgets <= 1.5 in time and memory, extractable /
DuckDB <= 0.5 in time; its first lines name the command, the log and its size on disk, the
carto_cli that ran (git commit, "+dirty" when modified) and the load average at the start. The
DuckDB file is checked against carto's (forget events exactly, difficulty and the signal within
1e-6, quadrants apart only at a threshold). `--check` also compares the kernel (`extract.py`, its
loops compiled where built) with the Polars definition of the signal on the whole log (slow: the
definition explodes every early sketch).
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
from common import DATA_ROOT, carto_source, dir_size_mib, encoding_tag, quadrant_checks, run_step

from carto_cli.log.writer import write_parquet

CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]
CONTENDERS_PY = Path(__file__).with_name("contenders.py")


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


# (numerator, denominator, measure, goal): issue 25's goals for the default path.
GOALS = (
    ("extractable", "forgets", "wall_s", 1.5),
    ("extractable", "forgets", "peak_rss_mib", 1.5),
    ("extractable", "duckdb-sketch", "wall_s", 0.5),
)
INFO_RATIOS = (("extractable", "forgets", "cpu_s"), ("extractable", "duckdb-sketch", "cpu_s"),
               ("extractable", "duckdb-sketch", "peak_rss_mib"))
TOLERANCE = 1e-6  # difficulty and the signal, DuckDB's float sums against carto's fixed point


def compare_duckdb(carto: Path, duck: Path) -> dict:
    """duckdb-sketch's file against carto's: forget events exactly, difficulty and memorization
    within TOLERANCE (null in both or neither), quadrants apart only at carto's thresholds."""
    import polars as pl

    from carto_cli.io.artifacts import read_provenance

    thresholds = read_provenance(carto)["thresholds"]
    columns = ["sample_id", "difficulty", "forget_events", "memorization", "quadrant"]
    j = pl.read_parquet(carto, columns=columns).join(
        pl.read_parquet(duck, columns=columns).cast({"forget_events": pl.Int64}), on="sample_id", how="full",
        coalesce=True, suffix="_duckdb")
    other = {name: pl.col(f"{name}_duckdb") for name in columns[1:]}
    floats = {name: ((pl.col(name) - other[name]).abs() > TOLERANCE).sum()
              + pl.col(name).is_null().ne(other[name].is_null()).sum() for name in ("difficulty", "memorization")}
    stats = j.select(
        samples=pl.len(), missing=(pl.col("forget_events").is_null() | other["forget_events"].is_null()).sum(),
        forget_events_mismatches=pl.col("forget_events").ne_missing(other["forget_events"]).sum(),
        difficulty_beyond_tolerance=floats["difficulty"], memorization_beyond_tolerance=floats["memorization"],
        memorization_max_abs_diff=(pl.col("memorization") - other["memorization"]).abs().max(),
        **quadrant_checks(thresholds, "_duckdb"),
    ).row(0, named=True)
    return {k: (v or 0) for k, v in stats.items()}


def agrees(result: dict) -> bool:
    return not any(result[k] for k in ("missing", "forget_events_mismatches", "difficulty_beyond_tolerance",
                                       "memorization_beyond_tolerance", "quadrant_mismatches_off_threshold"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--logs", type=Path, help="the sketched log (generated there if missing)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--no-duckdb", action="store_true", help="leave out the DuckDB query (slow at 10M samples)")
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
    arms = {"extractable": [], "forgets": ["--memorization", "forgets"]}
    if not args.no_duckdb:
        arms["duckdb-sketch"] = None
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {name: Path(tmp) / f"{name}.parquet" for name in runs}
        for _ in range(args.repeat):
            for name, extra in arms.items():
                outs[name].unlink(missing_ok=True)
                argv = ([*CARTO, "score", str(logs), "--out", str(outs[name]), *extra] if extra is not None
                        else [sys.executable, str(CONTENDERS_PY), name, str(logs), str(outs[name])])
                runs[name].append(run_step(name, argv, args.timeout, tail=2, width=14))
        ok = all(r["status"] == "ok" for rs in runs.values() for r in rs)
        import polars as pl

        same_state = ok and pl.read_parquet(outs["extractable"]).drop("memorization", "quadrant").equals(
            pl.read_parquet(outs["forgets"]).drop("memorization", "quadrant"))
        duckdb = compare_duckdb(outs["extractable"], outs["duckdb-sketch"]) if ok and "duckdb-sketch" in runs else None
    best = {m: {name: min(r[m] for r in rs) for name, rs in runs.items()} for m in ("wall_s", "cpu_s")}
    best["peak_rss_mib"] = {name: max(r["peak_rss_mib"] for r in rs) for name, rs in runs.items()}
    goals, info = [], {}
    for num, den, measure, goal in GOALS:
        if den in runs:
            value = best[measure][num] / best[measure][den]
            goals.append({"ratio": f"{num}/{den} {measure}", "value": value, "goal": goal, "met": value <= goal})
    for num, den, measure in INFO_RATIOS:
        if den in runs:
            info[f"{num}/{den} {measure}"] = best[measure][num] / best[measure][den]
    result = {
        "samples": args.samples, "epochs": args.epochs, "repeat": args.repeat,
        "log_on_disk_mib": round(on_disk, 1), "load_avg_1m_at_start": round(load, 2),
        "best_wall_s": best["wall_s"], "best_cpu_s": best["cpu_s"], "peak_rss_mib": best["peak_rss_mib"],
        "median_wall_s": {n: statistics.median(r["wall_s"] for r in rs) for n, rs in runs.items()},
        "runs": runs, "goals": goals, "ratios": info,
        "time_ratio": best["wall_s"]["extractable"] / best["wall_s"]["forgets"],
        "rss_ratio": best["peak_rss_mib"]["extractable"] / best["peak_rss_mib"]["forgets"],
        "other_columns_identical": same_state, "duckdb_agreement": duckdb,
    }
    if args.check:
        result["kernel_vs_definition_mismatches"] = check(logs)
    print(f"best of {args.repeat} (wall, CPU), largest peak RSS; the other score columns identical: {same_state}")
    for goal in goals:
        print(f"{goal['ratio']}: {goal['value']:.2f} (goal <= {goal['goal']:g}) {'met' if goal['met'] else 'NOT met'}")
    for name, value in info.items():
        print(f"  for reference: {name}: {value:.2f}")
    if duckdb is not None:
        print(f"duckdb-sketch vs carto: {'agree' if agrees(duckdb) else 'DISAGREE'} on {duckdb['samples']:,} samples: "
              f"{duckdb['forget_events_mismatches']} forget_events mismatches, difficulty "
              f"{duckdb['difficulty_beyond_tolerance']} and memorization {duckdb['memorization_beyond_tolerance']} "
              f"beyond {TOLERANCE:g} (max |memorization diff| {duckdb['memorization_max_abs_diff']:.1e}); quadrant "
              f"differs for {duckdb['quadrant_mismatches']} sample(s), "
              f"{duckdb['quadrant_mismatches_off_threshold']} of them not at a threshold")
    if args.check:
        print(f"kernel vs Polars definition: {result['kernel_vs_definition_mismatches']} mismatching samples")
    print(json.dumps(result))
    good = ok and same_state and not result.get("kernel_vs_definition_mismatches")
    return 0 if good and (duckdb is None or agrees(duckdb)) else 1


if __name__ == "__main__":
    sys.exit(main())
