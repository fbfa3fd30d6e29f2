"""What writing a scores file costs: codecs and writers, on carto's own scores, in one process.

    python benchmarks/bench_write.py --logs /work/bench_data/logs-10000000x4 --repeat 3

Scores the log once (`carto_cli.score_logs`, in memory: the thirteen columns and the quadrant),
then writes that frame, already in memory, to Parquet in each of these ways, the order rotated
every round: Polars' `sink_parquet` with carto's choice (zstd level 1) and the other codecs, the
same without the quadrant column and with the quadrant as an Enum (what a string column costs),
pyarrow's `write_table` and DuckDB's `COPY ... TO`. For each: wall time, the process's CPU time
(user + system, every thread) and the file's size; the best of the rounds. Every file is read back
by Polars, pyarrow and DuckDB (rows and sample ids; the plain-string ones also the quadrant's
type), so a codec that a reader cannot open shows up here. In-process timings: no start-up, and
the frame's memory is warm, so these are the write's own costs, a floor under what the write costs
inside `carto score`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import carto_source


def variants(thresholds) -> dict:
    """name -> (the frame's transformation, writer, options)."""
    import polars as pl

    from carto_cli.score import quadrants

    enum = pl.Enum(list(quadrants.QUADRANTS))
    as_enum = quadrants._each_quadrant(thresholds, {q: pl.lit(q, dtype=enum) for q in quadrants.QUADRANTS})
    keep = lambda lf: lf  # noqa: E731
    return {
        "polars zstd-1 (carto)": (keep, "polars", {"compression": "zstd", "compression_level": 1}),
        "polars zstd-3": (keep, "polars", {"compression": "zstd", "compression_level": 3}),
        "polars lz4": (keep, "polars", {"compression": "lz4"}),
        "polars snappy": (keep, "polars", {"compression": "snappy"}),
        "polars uncompressed": (keep, "polars", {"compression": "uncompressed"}),
        "polars zstd-1, no statistics": (keep, "polars", {"compression": "zstd", "compression_level": 1,
                                                          "statistics": False}),
        "polars zstd-1, no quadrant": (lambda lf: lf.drop("quadrant"), "polars",
                                       {"compression": "zstd", "compression_level": 1}),
        "polars zstd-1, quadrant as Enum": (lambda lf: lf.with_columns(quadrant=as_enum), "polars",
                                            {"compression": "zstd", "compression_level": 1}),
        "pyarrow zstd-1": (keep, "pyarrow", {"compression": "zstd", "compression_level": 1}),
        "duckdb zstd-1": (keep, "duckdb", {}),
    }


def write(frame, how, writer: str, options: dict, path: Path) -> None:
    if writer == "polars":
        how(frame.lazy()).sink_parquet(path, **options)
    elif writer == "pyarrow":
        import pyarrow.parquet as pq

        pq.write_table(frame.to_arrow(), path, **options)
    else:
        import duckdb

        with duckdb.connect(config={"threads": os.cpu_count() or 1}) as con:
            con.register("scores", frame.to_arrow())
            con.execute(f"COPY (SELECT * FROM scores) TO '{path}' (FORMAT parquet, COMPRESSION zstd, "
                        "COMPRESSION_LEVEL 1)")


def read_back(path: Path, frame) -> dict:
    """Rows, the sample ids and the quadrant's type as Polars, pyarrow and DuckDB read the file."""
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    ids = frame["sample_id"]
    by_polars = pl.read_parquet(path, columns=["sample_id"])["sample_id"]
    by_pyarrow = pq.read_table(path, columns=["sample_id"]).column("sample_id")
    count, total = duckdb.sql(f"SELECT count(*), sum(sample_id::HUGEINT) FROM '{path}'").fetchall()[0]
    schema = pl.read_parquet_schema(path)
    return {
        "polars": by_polars.equals(ids),
        "pyarrow": by_pyarrow.length() == len(ids) and pl.Series(by_pyarrow).equals(ids, check_names=False),
        "duckdb": count == len(ids) and int(total) == int(ids.cast(pl.Int128).sum()),
        "quadrant": str(schema.get("quadrant")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, required=True, help="log directory (from make_bench_logs.py)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the best of them is kept")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    print(f"command: python benchmarks/bench_write.py {' '.join(sys.argv[1:])}")
    print(f"carto_cli: {carto_source()}; load {os.getloadavg()[0]:.2f}", flush=True)

    from carto_cli import score_logs
    from carto_cli.engines.pipeline import Placement

    frame = score_logs(args.logs)
    thresholds = Placement().thresholds(frame)
    ways = variants(thresholds)
    runs: dict[str, list[dict]] = {name: [] for name in ways}
    checks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="carto-bench-write-") as tmp:
        names = list(ways)
        for r in range(args.repeat):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                how, writer, options = ways[name]
                path = Path(tmp) / f"{len(checks)}-{r}.parquet"
                wall, cpu = time.perf_counter(), time.process_time()
                write(frame, how, writer, options, path)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                runs[name].append({"wall_s": wall, "cpu_s": cpu, "mib": path.stat().st_size / 2**20})
                print(f"  [{r + 1}/{args.repeat}] {name}: wall {wall:.2f} s, cpu {cpu:.2f} s", flush=True)
                if r == 0:
                    checks[name] = read_back(path, frame)
                path.unlink()

    print(f"\n{frame.height:,} samples, {frame.width} columns; in-process, best of {args.repeat}\n")
    best = {name: min(rs, key=lambda x: x["wall_s"]) for name, rs in runs.items()}
    base = best["polars zstd-1 (carto)"]
    print(f"{'way':<34} {'wall s':>7} {'cpu s':>7} {'MiB':>6} {'wall/carto':>10}  read back by polars, pyarrow, duckdb")
    for name, b in best.items():
        c = checks[name]
        ok = ", ".join("ok" if c[k] else "DIFFERS" for k in ("polars", "pyarrow", "duckdb"))
        print(f"{name:<34} {b['wall_s']:>7.2f} {b['cpu_s']:>7.2f} {b['mib']:>6.0f} "
              f"{b['wall_s'] / base['wall_s']:>10.2f}  {ok}; quadrant read by Polars as {c['quadrant']}")
    print(json.dumps({"logs": str(args.logs), "samples": frame.height, "repeat": args.repeat, "best": best,
                      "runs": runs, "read_back": checks}))


if __name__ == "__main__":
    main()
