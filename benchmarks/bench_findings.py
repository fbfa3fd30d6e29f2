"""The findings pass at corpus scale: every copy of the memorized strings in a tokenized dataset,
carto's token search (`carto_cli.score.match`) against what a user would reach for.

    python benchmarks/bench_findings.py                                  # 100,000 rows x ~512 tokens
    python benchmarks/bench_findings.py --rows 10_000_000 --row-tokens 1024 \
        --contenders carto,ahocorasick,polars --repeat 1                   # the issue's scale: 15.5 GiB

Writes a synthetic tokenized dataset under /work/bench_data (Parquet, one `input_ids` column of
list<uint16> (or int32), zstd, row groups of 65,536 rows): row lengths uniform in [L/2, 3L/2] for
`--row-tokens L`, tokens drawn from a Zipf distribution (exponent 1) over `--vocab` ids, and
`--strings` planted strings (16-64 tokens from the same distribution) each copied into 1-1,000
random rows at random positions (log-uniform counts). The strings searched are the planted ones
plus one tenth as many random strings of the same lengths that occur nowhere (a finding need not
occur in the data). Then runs each contender in its own process, alternately `--repeat` times,
and prints its wall time and peak RSS (wait4) and the ratios carto / contender:

- `carto`: the dataset read a batch at a time with pyarrow (8,192 rows, no pre-buffering: see
  `batches`; the list column's values as they are, uint16, no copy), `match.find` per batch (its
  compiled loop where built);
- `carto-tokens`: `findings.search`, what `carto score --data` runs, over the batches
  `carto_cli.io.tokens` reads (8,192 rows, no pre-buffering, through Polars, the tokens in the
  column's own type);
- `ahocorasick`: pyahocorasick's automaton over each batch (read as carto's) as one string, one
  character per token, rows separated by a character no pattern holds; every occurrence,
  positions included;
- `duckdb`: the SQL an expert writes: each row and each pattern as its tokens joined by spaces
  (' 5 9 2 '), the rows joined to the patterns on `contains`; which rows hold which pattern (no
  counts). A regular expression of all the patterns as a filter first took nearly as long. Left out at
  the issue's scale: at the default one it took 36 times carto's time
  (docs/benchmark-results/findings-100k-feb4bf3.txt);
- `polars`: the same strings, `str.extract_many(patterns, overlapping=True)` (Polars' Aho-Corasick),
  lazily, with the streaming engine; counts per (pattern, row).

Every contender must find the same (pattern, row) pairs as carto; the occurrence count of each pair
is compared where the contender gives one (all but DuckDB), and every position with pyahocorasick.
Exits with status 1 when one disagrees or fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import DATA_ROOT, carto_source, run_step

CONTENDERS = ("carto", "carto-tokens", "ahocorasick", "duckdb", "polars")
ROW_GROUP_ROWS = 65_536  # rows per row group written
# rows per batch read with pyarrow (carto, ahocorasick): reading this file in batches of 65,536 rows
# took 4x the CPU time and twice the memory of 8,192 (measured while writing this script)
BATCH_ROWS = 8_192
ANCHOR = 8  # findings.DEFAULT_MIN_LENGTH: the shortest string a finding searches for
STRING_TOKENS = (16, 64)
ZIPF_QUANTILES = 1 << 22  # the sampler's table: token ids by quantile of the Zipf distribution


# ------------------------------------------------------------------ the workload


def zipf_sampler(vocab: int) -> np.ndarray:
    """(ZIPF_QUANTILES,) token ids by quantile: id k (0-based) has probability proportional to
    1 / (k + 1), so `table[uniform integers]` draws Zipf-distributed tokens in one gather."""
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1))
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, (np.arange(ZIPF_QUANTILES) + 0.5) / ZIPF_QUANTILES), vocab - 1)


def write_data(data: Path, patterns_file: Path, *, rows: int, row_tokens: int, vocab: int, dtype: str,
               strings: int, seed: int = 0) -> None:
    """The dataset (see the module docstring) and the strings searched (`pattern`, `tokens`)."""
    rng = np.random.default_rng(seed)
    sampler = zipf_sampler(vocab).astype(dtype)
    lengths = rng.integers(row_tokens // 2, row_tokens * 3 // 2 + 1, rows)
    planted = _distinct([sampler[rng.integers(0, ZIPF_QUANTILES, n)]
                         for n in rng.integers(STRING_TOKENS[0], STRING_TOKENS[1] + 1, strings)])
    decoys = [rng.integers(0, vocab, len(planted[i])).astype(dtype) for i in range(max(1, strings // 10))]
    copies = np.minimum(np.exp(rng.uniform(0, math.log(1000), len(planted))).astype(np.int64), 1000)
    copy_string = np.repeat(np.arange(len(planted)), copies)
    copy_row = rng.integers(0, rows, len(copy_string))
    by_row = np.argsort(copy_row, kind="stable")
    copy_string, copy_row = copy_string[by_row], copy_row[by_row]
    data.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("input_ids", pa.list_(pa.from_numpy_dtype(np.dtype(dtype))))])
    with pq.ParquetWriter(data, schema, compression="zstd") as writer:
        for lo in range(0, rows, ROW_GROUP_ROWS):
            hi = min(rows, lo + ROW_GROUP_ROWS)
            offsets = np.concatenate([[0], np.cumsum(lengths[lo:hi])])
            values = sampler[rng.integers(0, ZIPF_QUANTILES, int(offsets[-1]), dtype=np.uint32)]
            a, b = np.searchsorted(copy_row, [lo, hi])
            for s, r in zip(copy_string[a:b], copy_row[a:b]):  # plant the copies of rows [lo, hi)
                string, room = planted[s], lengths[r] - len(planted[s])
                if room >= 0:
                    at = offsets[r - lo] + int(rng.integers(0, room + 1))
                    values[at : at + len(string)] = string
            column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
            writer.write_table(pa.table({"input_ids": column}), row_group_size=ROW_GROUP_ROWS)
    tokens = [p.astype(np.int64) for p in planted + decoys]
    pq.write_table(pa.table({"pattern": np.arange(len(tokens), dtype=np.int64),
                             "tokens": pa.array(tokens, type=pa.list_(pa.int64()))}), patterns_file)


def _distinct(strings: list[np.ndarray]) -> list[np.ndarray]:
    seen: set[bytes] = set()
    return [s for s in strings if not (s.tobytes() in seen or seen.add(s.tobytes()))]


def read_patterns(patterns_file: Path) -> list[np.ndarray]:
    table = pq.read_table(patterns_file)
    return [np.asarray(t, dtype=np.int64) for t in table.column("tokens").to_pylist()]


def _spaced(tokens: np.ndarray) -> str:
    """A token string as DuckDB's and Polars' contenders write it: ' 5 9 2 ' (the spaces make a
    match start and end at token boundaries)."""
    return " " + " ".join(map(str, tokens.tolist())) + " "


# ------------------------------------------------------------------ the contenders (each in its own process)


def batches(data: Path):
    """The `input_ids` column, BATCH_ROWS rows at a time. Without pre-buffering: with pyarrow's
    default (pre_buffer=True) the memory held grew with every batch read, to the file's size at
    the end (16 GiB peak RSS for the 15.5 GiB file of `--rows 10_000_000 --row-tokens 1024`,
    pyarrow 26.0.1); read through a 1 MiB buffer instead it stayed near 260 MiB for the same
    CPU time (measured while writing this script)."""
    file = pq.ParquetFile(data, pre_buffer=False, buffer_size=1 << 20)
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=["input_ids"]):
        yield batch.column(0)


def run_carto(data: Path, patterns: list[np.ndarray]) -> dict[str, np.ndarray]:
    from carto_cli.score import match

    compiled = match.Patterns(patterns, anchor=ANCHOR)
    found, first_row = [], 0
    for column in batches(data):
        hits = match.find(compiled, column.values.to_numpy(), column.offsets.to_numpy())
        found.append((hits.pattern, hits.row + first_row, hits.pos))
        first_row += len(column)
    return dict(zip(("pattern", "row", "pos"), (np.concatenate(parts) for parts in zip(*found))))


def run_carto_tokens(data: Path, patterns: list[np.ndarray]) -> dict[str, np.ndarray]:
    """`findings.search` over the batches `carto_cli.io.tokens` reads: what `carto score --data` runs."""
    from carto_cli.io.tokens import open_tokens
    from carto_cli.score import findings, match

    hits = findings.search(match.Patterns(patterns, anchor=ANCHOR), open_tokens(data))
    return {"pattern": hits["pattern"].to_numpy(), "row": hits["sample_id"].to_numpy(), "pos": hits["start"].to_numpy()}


def _codepoints(tokens: np.ndarray) -> np.ndarray:
    """Token ids as Unicode code points, one per token (the surrogates skipped)."""
    tokens = tokens.astype(np.uint32)
    return tokens + np.uint32(0x800) * (tokens >= 0xD800)


def run_ahocorasick(data: Path, patterns: list[np.ndarray]) -> dict[str, np.ndarray]:
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for j, tokens in enumerate(patterns):
        automaton.add_word(_codepoints(tokens).astype("<u4").tobytes().decode("utf-32-le"), (j, len(tokens)))
    automaton.make_automaton()
    separator = np.uint32(0x10FFFF)  # above every token's code point (vocabularies < 1.1M)
    found, first_row = [], 0
    for column in batches(data):
        offsets = column.offsets.to_numpy().astype(np.int64)
        values = column.values.to_numpy()[offsets[0] : offsets[-1]]
        lengths = np.diff(offsets)
        # the batch as one string: each row's tokens, then the separator; row i starts at starts[i]
        starts = offsets[:-1] - offsets[0] + np.arange(len(lengths))
        text = np.full(len(values) + len(lengths), separator, dtype="<u4")
        text[np.arange(len(values)) + np.repeat(np.arange(len(lengths)), lengths)] = _codepoints(values)
        ends, pattern = [], []
        for end, (j, n) in automaton.iter(text.tobytes().decode("utf-32-le")):
            ends.append(end - n + 1)
            pattern.append(j)
        at = np.asarray(ends, dtype=np.int64)
        row = np.searchsorted(starts, at, side="right") - 1
        found.append((np.asarray(pattern, dtype=np.int64), row + first_row, at - starts[row]))
        first_row += len(column)
    return dict(zip(("pattern", "row", "pos"), (np.concatenate(parts) for parts in zip(*found))))


def run_duckdb(data: Path, patterns_file: Path) -> dict[str, np.ndarray]:
    import duckdb

    found = duckdb.sql(f"""
        WITH p AS (SELECT pattern, ' ' || array_to_string(tokens, ' ') || ' ' AS s
                   FROM read_parquet('{patterns_file}')),
             r AS (SELECT file_row_number AS row, ' ' || array_to_string(input_ids, ' ') || ' ' AS s
                   FROM read_parquet('{data}', file_row_number = true))
        SELECT p.pattern, r.row FROM r JOIN p ON contains(r.s, p.s)""").fetchnumpy()
    return {"pattern": found["pattern"].astype(np.int64), "row": found["row"].astype(np.int64)}


def run_polars(data: Path, patterns: list[np.ndarray]) -> dict[str, np.ndarray]:
    import polars as pl

    spaced = [_spaced(p) for p in patterns]
    text = pl.lit(" ") + pl.col("input_ids").cast(pl.List(pl.String)).list.join(" ") + pl.lit(" ")
    found = (pl.scan_parquet(data).with_row_index("row")
             .select("row", text.str.extract_many(spaced, overlapping=True).alias("found"))
             .filter(pl.col("found").list.len() > 0).explode("found")
             .group_by("row", "found").len()
             .join(pl.LazyFrame({"found": spaced, "pattern": np.arange(len(spaced))}), on="found")
             .collect(engine="streaming"))
    return {"pattern": found["pattern"].to_numpy().astype(np.int64), "row": found["row"].to_numpy().astype(np.int64),
            "count": found["len"].to_numpy().astype(np.int64)}


def run_contender(name: str, data: Path, patterns_file: Path, out: Path) -> None:
    """One contender's search, timed inside its process (after imports are done by the call), its
    occurrences written to `out` (.npz: pattern, row and, where it has them, pos or count)."""
    start = time.perf_counter()
    if name == "duckdb":
        result = run_duckdb(data, patterns_file)
    else:
        patterns = read_patterns(patterns_file)
        run = {"carto": run_carto, "carto-tokens": run_carto_tokens, "ahocorasick": run_ahocorasick,
               "polars": run_polars}[name]
        result = run(data, patterns)
    what = "occurrences" if "pos" in result else "(pattern, row) pairs"
    print(f"{name}: {len(result['pattern']):,} {what} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    np.savez(out, **result)


# ------------------------------------------------------------------ the agreement check


def per_pair(result: dict[str, np.ndarray]) -> dict[tuple[int, int], int | None]:
    """{(pattern, row): its occurrences, or None where the contender does not count them}."""
    pairs = np.stack([result["pattern"], result["row"]], axis=1)
    if "pos" in result:
        pairs, counts = np.unique(pairs, axis=0, return_counts=True)
        counts = counts.tolist()
    elif "count" in result:
        counts = result["count"].tolist()
    else:
        pairs = np.unique(pairs, axis=0)
        counts = [None] * len(pairs)
    return {(p, r): c for (p, r), c in zip(pairs.tolist(), counts)}


def agreement(outs: dict[str, Path]) -> dict[str, dict]:
    """Each contender against carto: same (pattern, row) pairs; same counts and positions where it has them."""
    results = {name: dict(np.load(path)) for name, path in outs.items() if path.exists()}
    if "carto" not in results:
        return {}
    reference = results["carto"]
    want = per_pair(reference)
    positions = {tuple(t) for t in np.stack([reference["pattern"], reference["row"], reference["pos"]], 1).tolist()}
    checks = {}
    for name, result in results.items():
        if name == "carto":
            continue
        got = per_pair(result)
        check = {"pairs": len(got), "missing": len(want.keys() - got.keys()), "extra": len(got.keys() - want.keys())}
        counted = [k for k, c in got.items() if c is not None and k in want]
        if counted or "pos" in result:
            check["count_mismatches"] = sum(got[k] != want[k] for k in counted)
        if "pos" in result:
            mine = {tuple(t) for t in np.stack([result["pattern"], result["row"], result["pos"]], 1).tolist()}
            check["position_mismatches"] = len(mine ^ positions)
        check["agrees"] = not (check["missing"] or check["extra"] or check.get("count_mismatches")
                               or check.get("position_mismatches"))
        checks[name] = check
    return checks


# ------------------------------------------------------------------ the driver


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=100_000)
    ap.add_argument("--row-tokens", type=int, default=512, help="mean tokens per row")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--dtype", choices=["uint16", "int32"], default="uint16")
    ap.add_argument("--strings", type=int, default=300, help="planted strings")
    ap.add_argument("--data", type=Path, help="the dataset's folder (generated there if missing)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--write", action="store_true", help=argparse.SUPPRESS)  # the child that writes the data
    ap.add_argument("--run", help=argparse.SUPPRESS)  # the child that runs one contender
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    names = [n for n in args.contenders.split(",") if n]
    if unknown := set(names) - set(CONTENDERS):
        ap.error(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    if "carto" not in names:
        ap.error("--contenders must include carto (the others are checked against it)")
    folder = args.data or DATA_ROOT / f"tokens-{args.rows}x{args.row_tokens}-{args.dtype}-v{args.vocab}-s{args.strings}"
    data, patterns_file = folder / "train.parquet", folder / "patterns.parquet"
    if args.write:
        write_data(data, patterns_file, rows=args.rows, row_tokens=args.row_tokens, vocab=args.vocab,
                   dtype=args.dtype, strings=args.strings)
        return 0
    if args.run:
        run_contender(args.run, data, patterns_file, args.out)
        return 0
    if not data.exists() or not patterns_file.exists():
        # in a child: wait4's peak RSS of a forked child starts from its parent's
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write", *sys.argv[1:]], check=True)
        print(f"wrote {folder} in {time.perf_counter() - start:.0f} s")
    return compare(args, names, folder, data, patterns_file)


def compare(args, names: list[str], folder: Path, data: Path, patterns_file: Path) -> int:
    meta = pq.ParquetFile(data).metadata
    tokens = sum(meta.row_group(g).column(0).num_values for g in range(meta.num_row_groups))
    print(f"command: python benchmarks/bench_findings.py {' '.join(sys.argv[1:])}")
    print(f"data: {data}: {meta.num_rows:,} rows, {tokens:,} tokens ({args.dtype}), "
          f"{data.stat().st_size / 2**30:.2f} GiB on disk; {pq.read_metadata(patterns_file).num_rows} strings "
          f"searched (anchor {ANCHOR}); load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print(f"carto: {json.dumps(carto_source())}")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        outs = {name: Path(tmp) / f"{name}.npz" for name in names}
        for round_ in range(args.repeat):
            order = names if round_ % 2 == 0 else names[::-1]  # alternated: no contender always first
            for name in order:
                argv = [sys.executable, __file__, "--data", str(folder), "--run", name, "--out", str(outs[name])]
                runs[name].append(run_step(name, argv, args.timeout, tail=2, width=13))
        checks = agreement({n: p for n, p in outs.items() if all(r["status"] == "ok" for r in runs[n])})
    best = {n: min(r["wall_s"] for r in rs) for n, rs in runs.items() if all(r["status"] == "ok" for r in rs)}
    rss = {n: max(r["peak_rss_mib"] for r in rs) for n, rs in runs.items() if n in best}
    result = {"rows": meta.num_rows, "tokens": tokens, "bytes_on_disk": data.stat().st_size, "dtype": args.dtype,
              "repeat": args.repeat, "best_wall_s": best,
              "median_wall_s": {n: statistics.median(r["wall_s"] for r in runs[n]) for n in best},
              "peak_rss_mib": rss, "status": {n: [r["status"] for r in rs] for n, rs in runs.items()},
              "agreement": checks}
    if "carto" in best:
        result["time_ratio"] = {n: best["carto"] / best[n] for n in best if n != "carto"}
        result["rss_ratio"] = {n: rss["carto"] / rss[n] for n in rss if n != "carto"}
        result["carto_tokens_per_s"] = tokens / best["carto"]
        for n in result["time_ratio"]:
            print(f"carto / {n:12s} time {result['time_ratio'][n]:.3f} (best of {args.repeat}), "
                  f"peak RSS {result['rss_ratio'][n]:.2f}")
    for n, check in checks.items():
        print(f"{n:13s} agrees with carto: {check['agrees']} {json.dumps(check)}")
    ok = len(best) == len(names) and len(checks) == len(names) - 1 and all(c["agrees"] for c in checks.values())
    result["ok"] = ok
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
