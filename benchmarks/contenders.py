"""The contenders of `bench_score.py`, each run alone in a fresh process by that script.

    python benchmarks/contenders.py NAME LOGS_DIR OUT.parquet

runs one contender on the log directory, writes its per-sample result to OUT (scan excepted) and
prints one JSON line on stdout: {"work_s": seconds, ...details}, where work_s is timed after the
contender's libraries are imported. Each contender imports only the libraries it uses, so a
process's peak RSS is its own.

- scan: the floor. A Polars lazy scan of the five scored columns reduced to sums, so every value
  is decoded and nothing else is done.
- duckdb: the first SQL one writes (kept for continuity with earlier results). Forget events from
  lag(correct) over (partition by sample_id order by step), n_seen and the mean loss over early
  epochs in a second group-by, joined per sample, COPY'd to Parquet.
- duckdb-window: what an expert writes: the same window, but everything in ONE group-by over it
  (no second scan, no join).
- duckdb-bitmask: carto's bitmask kernel written in SQL: c = bit_or(1 << epoch) over correct
  rows, s = the same over all rows, forget_events = bit_count(c & ~(c >> 1) & (s >> 1)); no sort
  and no window. Exact only when every sample is seen at most once per epoch, in consecutive
  epochs, epochs in step order (true of this workload; checked against carto like the others).
- duckdb-full: like for like: every column of carto's scores file (mean loss, Dataset
  Cartography's confidence, variability and correctness, memorization, first learned epoch, the
  quadrant at the median thresholds), sorted by sample_id, in one query built on the bitmask one.
  The three above compute four columns; carto computes and writes thirteen.
- duckdb-sketch: for a log with the shim's sketch (`bench_signal.py`), what an expert writes for
  the columns `carto score` ranks by at its default: difficulty, forget events (the bitmask), the
  `extractable` signal through list comprehensions over the sketch (the last late presentation's
  hit runs by `arg_max` over (step, epoch, runs), each early presentation's sketched losses summed
  per run with `list_transform`, the runs' sums added over the early presentations, the largest
  divided by their count), the quadrants at the median thresholds, sorted by sample_id.
- polars: a straightforward Polars group_by with `sort_by("step")` inside the aggregation.
- carto / carto-bitmask / carto-general: `carto score LOGS --out OUT [--method bitmask|general]`
  (auto: the dense-id kernel where ids are dense; bitmask: the Polars hash kernel; general: the
  sort) through the CLI's own
  entry point (`carto_cli.cli:main`, what the `carto` script calls): reading and checking the
  parts, scoring, quadrants, and writing the scores file with provenance.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import EARLY_EPOCHS, LOG_COLUMNS


def _parquet_glob(logs: Path) -> str:
    return str(logs / "**" / "*.parquet")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def scan_floor(logs: Path, out: Path) -> dict:
    import polars as pl

    totals = pl.scan_parquet(_parquet_glob(logs)).select(
        pl.col(name).sum() for name in LOG_COLUMNS
    ).collect()
    return {"sums": totals.row(0, named=True)}


DUCKDB_QUERY = f"""
WITH presentations AS (
    SELECT sample_id, epoch, step, loss, correct FROM read_parquet({{glob}})
),
forgets AS (
    SELECT sample_id, count(*) FILTER (WHERE prev_correct AND NOT correct) AS forget_events
    FROM (
        SELECT sample_id, correct,
               lag(correct) OVER (PARTITION BY sample_id ORDER BY step) AS prev_correct
        FROM presentations
    )
    GROUP BY sample_id
),
stats AS (
    SELECT sample_id, count(*) AS n_seen,
           avg(loss) FILTER (WHERE epoch < {EARLY_EPOCHS}) AS difficulty
    FROM presentations
    GROUP BY sample_id
)
SELECT sample_id, difficulty, forget_events, n_seen
FROM stats JOIN forgets USING (sample_id)
"""


DUCKDB_WINDOW_QUERY = f"""
SELECT sample_id,
       avg(loss) FILTER (WHERE epoch < {EARLY_EPOCHS}) AS difficulty,
       count(*) FILTER (WHERE prev_correct AND NOT correct) AS forget_events,
       count(*) AS n_seen
FROM (
    SELECT sample_id, epoch, loss, correct,
           lag(correct) OVER (PARTITION BY sample_id ORDER BY step) AS prev_correct
    FROM read_parquet({{glob}})
)
GROUP BY sample_id
"""

DUCKDB_BITMASK_QUERY = f"""
SELECT sample_id, difficulty, bit_count(c & ~(c >> 1) & (s >> 1)) AS forget_events, n_seen
FROM (
    SELECT sample_id,
           avg(loss) FILTER (WHERE epoch < {EARLY_EPOCHS}) AS difficulty,
           bit_or(1::UBIGINT << epoch::UBIGINT) AS s,
           coalesce(bit_or(1::UBIGINT << epoch::UBIGINT) FILTER (WHERE correct), 0::UBIGINT) AS c,
           count(*) AS n_seen
    FROM read_parquet({{glob}})
    GROUP BY sample_id
)
"""


# The quadrants of a `scored` CTE (difficulty, memorization) at the median thresholds, sorted by
# sample_id: the tail of duckdb-full and duckdb-sketch.
QUADRANTS_SQL = """thresholds AS (
    SELECT quantile_disc(difficulty, 0.5) AS d, quantile_disc(memorization, 0.5) AS m
    FROM scored WHERE difficulty IS NOT NULL AND memorization IS NOT NULL
)
SELECT scored.*,
       CASE WHEN difficulty IS NULL OR memorization IS NULL THEN NULL
            WHEN difficulty > d AND memorization > m THEN 'noisy-outlier'
            WHEN difficulty > d THEN 'ambiguous-hard'
            WHEN memorization > m THEN 'hotspot-memorized'
            ELSE 'stable-easy' END AS quadrant
FROM scored, thresholds
ORDER BY sample_id
"""

# Like for like: the scores file carto writes, every column of it, in SQL. The bitmask query's
# aggregation (the fastest) with the other sums beside it, materialized once; the quadrant
# thresholds are the medians over the samples that can be placed (quantile_disc: at an even count
# DuckDB takes the lower middle value, Polars' "nearest" the upper one, so samples exactly at a
# threshold may be placed differently; bench_score.py checks that only those differ); sorted by
# sample_id, as carto's file is.
DUCKDB_FULL_QUERY = f"""
WITH per_sample AS MATERIALIZED (
    SELECT sample_id,
           avg(loss) FILTER (WHERE epoch < {EARLY_EPOCHS}) AS difficulty,
           bit_or(1::UBIGINT << epoch::UBIGINT) AS s,
           coalesce(bit_or(1::UBIGINT << epoch::UBIGINT) FILTER (WHERE correct), 0::UBIGINT) AS c,
           count(*) AS n_seen,
           count(*) FILTER (WHERE correct) AS n_correct,
           min(epoch) FILTER (WHERE correct) AS first_learned_epoch,
           avg(loss) AS mean_loss,
           avg(exp(-loss)) AS confidence,
           stddev_pop(exp(-loss)) AS variability
    FROM read_parquet({{glob}})
    GROUP BY sample_id
),
scored AS MATERIALIZED (
    SELECT sample_id, difficulty,
           CASE WHEN n_correct > 0 THEN bit_count(c & ~(c >> 1) & (s >> 1)) / greatest(n_seen - 1, 1)
                ELSE 0.0 END AS memorization,
           bit_count(c & ~(c >> 1) & (s >> 1)) AS forget_events, n_seen, n_correct,
           n_correct > 0 AS ever_learned, first_learned_epoch, mean_loss, confidence, variability,
           n_correct / n_seen AS correctness
    FROM per_sample
),
""" + QUADRANTS_SQL


# The sketched log's expert query (duckdb-sketch). Its sums are float64 sums of the float16 (or
# float32) sketched losses, exact for float16 (multiples of 2^-24 below 2^16, a few per sum), so
# its signal equals carto's fixed-point one on the shim's logs.
DUCKDB_SKETCH_QUERY = f"""
WITH presentations AS (
    SELECT sample_id, epoch, step, loss, correct, top_pos, top_loss, hit_runs
    FROM read_parquet({{glob}}) WHERE isfinite(loss)
),
per_sample AS MATERIALIZED (
    SELECT sample_id,
           avg(loss) FILTER (WHERE epoch < {EARLY_EPOCHS}) AS difficulty,
           bit_or(1::UBIGINT << epoch::UBIGINT) AS s,
           coalesce(bit_or(1::UBIGINT << epoch::UBIGINT) FILTER (WHERE correct), 0::UBIGINT) AS c
    FROM presentations GROUP BY sample_id
),
last_runs AS MATERIALIZED (
    SELECT sample_id, arg_max(hit_runs, (step, epoch, hit_runs)) AS runs
    FROM presentations WHERE epoch >= {EARLY_EPOCHS} AND hit_runs IS NOT NULL GROUP BY sample_id
),
early AS (
    SELECT e.sample_id,
           list_transform(range(len(l.runs) // 2), lambda j: list_sum(list_transform(range(len(e.top_pos)),
               lambda q: CASE WHEN e.top_pos[q + 1] >= l.runs[2 * j + 1]
                                   AND e.top_pos[q + 1] < l.runs[2 * j + 1] + l.runs[2 * j + 2]
                                   AND isfinite(e.top_loss[q + 1])
                              THEN e.top_loss[q + 1]::DOUBLE ELSE 0.0 END))) AS per_run
    FROM presentations e JOIN last_runs l USING (sample_id)
    WHERE e.epoch < {EARLY_EPOCHS} AND e.top_pos IS NOT NULL AND e.top_loss IS NOT NULL
),
per_run AS (
    SELECT sample_id, j, sum(total) AS total, count(*) AS n_early
    FROM (SELECT sample_id, unnest(range(len(per_run))) AS j, unnest(per_run) AS total FROM early)
    GROUP BY sample_id, j
),
signal AS (
    SELECT sample_id, max(total) / any_value(n_early) AS memorization FROM per_run GROUP BY sample_id
),
scored AS MATERIALIZED (
    SELECT p.sample_id, p.difficulty, bit_count(p.c & ~(p.c >> 1) & (p.s >> 1)) AS forget_events, g.memorization
    FROM per_sample p LEFT JOIN signal g USING (sample_id)
),
""" + QUADRANTS_SQL


def _duckdb(query: str) -> Callable[[Path, Path], dict]:
    def run(logs: Path, out: Path) -> dict:
        import duckdb

        con = duckdb.connect()  # in memory, default settings (threads = cores)
        settings = con.execute("SELECT current_setting('threads'), current_setting('memory_limit')").fetchone()
        # COPY takes no prepared parameters: paths go in as quoted SQL string literals.
        sql = query.format(glob=_sql_string(_parquet_glob(logs)))
        con.execute(f"COPY ({sql}) TO {_sql_string(str(out))} (FORMAT parquet, COMPRESSION zstd)")
        return {"threads": settings[0], "memory_limit": settings[1]}

    return run


def polars_group_by(logs: Path, out: Path) -> dict:
    import polars as pl

    in_order = pl.col("correct").sort_by("step")
    per_sample = (
        pl.scan_parquet(_parquet_glob(logs))
        .group_by("sample_id")
        .agg(
            pl.col("loss").filter(pl.col("epoch") < EARLY_EPOCHS).mean().alias("difficulty"),
            (in_order.shift(1) & ~in_order).sum().alias("forget_events"),
            pl.len().alias("n_seen"),
        )
        .collect()
    )
    per_sample.write_parquet(out)
    return {}


def _carto_cli(*options: str) -> Callable[[Path, Path], dict]:
    def run(logs: Path, out: Path) -> dict:
        from carto_cli import cli

        sys.argv = ["carto", "score", str(logs), "--out", str(out), *options]
        try:
            cli.main()
        except SystemExit as exc:
            if exc.code:
                raise
        return {"argv": " ".join(sys.argv[1:])}

    return run


# name -> (modules imported before the clock starts, the work)
CONTENDERS: dict[str, tuple[tuple[str, ...], Callable[[Path, Path], dict]]] = {
    "scan": (("polars",), scan_floor),
    "duckdb": (("duckdb",), _duckdb(DUCKDB_QUERY)),
    "duckdb-window": (("duckdb",), _duckdb(DUCKDB_WINDOW_QUERY)),
    "duckdb-bitmask": (("duckdb",), _duckdb(DUCKDB_BITMASK_QUERY)),
    "duckdb-full": (("duckdb",), _duckdb(DUCKDB_FULL_QUERY)),
    "duckdb-sketch": (("duckdb",), _duckdb(DUCKDB_SKETCH_QUERY)),
    "polars": (("polars",), polars_group_by),
    "carto": (("carto_cli.cli",), _carto_cli()),
    "carto-bitmask": (("carto_cli.cli",), _carto_cli("--method", "bitmask")),
    "carto-general": (("carto_cli.cli",), _carto_cli("--method", "general")),
}


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in CONTENDERS:
        sys.exit(f"usage: contenders.py {{{','.join(CONTENDERS)}}} LOGS_DIR OUT.parquet")
    name, logs, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    modules, work = CONTENDERS[name]
    for module in modules:
        importlib.import_module(module)
    start = time.perf_counter()
    details = work(logs, out)
    work_s = time.perf_counter() - start
    print(json.dumps({"work_s": work_s, **details}, default=str), flush=True)


if __name__ == "__main__":
    main()
