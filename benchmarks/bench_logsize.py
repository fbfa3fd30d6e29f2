"""The log's size on disk: bytes per presentation of real logs, as found and rewritten with other
Parquet options, and what the sketch's values hold at best.

    python benchmarks/bench_logsize.py                       # the sample logs and the proto logs
    python benchmarks/bench_logsize.py LOG_DIR [LOG_DIR ...] [--repeat 5]

For each log directory (default: `sample_logs/` and the experiment baselines' logs under
/work/proto/dev0/logs and dev1/logs where they exist), every part is rewritten into a temporary
directory with each option below, and the table gives bytes per presentation (file bytes / rows,
footers included) overall and per column (its column chunks' compressed bytes / rows), and the CPU
time to read them back (every column, and the sketch's columns alone, per million rows):

- `as found`: the parts as they are on disk;
- `before`: pyarrow's defaults with zstd and page checksums (how the shim wrote parts before the
  per-column encodings: every column dictionary-encoded where pyarrow could);
- `carto`: `carto_cli.log.writer.write_parquet`, the shim's encodings now;
- `carto, zstd N`: the same at zstd level N (the shim writes pyarrow's default level);
- `carto, sorted`: the same with each part's rows sorted by sample_id (row order is free within a
  part);
- `without token_loss`: `before` and `carto` without the per-token losses, which the shim writes
  only when asked (`CartoLogger(token_losses=...)`): the default shim's parts.

Then a floor for the sketch: each sketch column's values, byte-transposed (byte j of every value
together), compressed by xz at its strongest preset: what a general compressor finds in them,
whatever the Parquet encoding. The write cost of `before` and `carto` (CPU seconds per million
rows, in this process, the best of `--repeat`) and a check that `carto score` gives the same file
(every column, both signals) on the parts as found and rewritten by `carto`. First lines: the
command, the carto commit and the load average; last line: a JSON line with every number.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import carto_source

from carto_cli.log import schema
from carto_cli.log.writer import write_parquet

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LOGS = [REPO / "sample_logs", Path("/work/proto/dev0/logs"), Path("/work/proto/dev1/logs")]
CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]
SKETCH_WIDTHS = {schema.TOP_POS: None, schema.TOP_LOSS: None, schema.HIT_RUNS: None}


def before(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd", write_page_checksum=True)


def options(table_has_token_loss: bool) -> dict:
    """name -> (writer, transform of each part's table)."""
    found = {
        "before": (before, None),
        "carto": (write_parquet, None),
        "carto, zstd 3": (lambda t, p: write_parquet(t, p, compression_level=3), None),
        "carto, zstd 9": (lambda t, p: write_parquet(t, p, compression_level=9), None),
        "carto, zstd 19": (lambda t, p: write_parquet(t, p, compression_level=19), None),
        "carto, sorted": (write_parquet, lambda t: t.sort_by(schema.SAMPLE_ID)),
    }
    if table_has_token_loss:
        drop = lambda t: t.drop_columns([schema.TOKEN_LOSS])  # noqa: E731
        found["before, without token_loss"] = (before, drop)
        found["carto, without token_loss"] = (write_parquet, drop)
    return found


def read_cost(paths: list[Path], repeat: int) -> dict:
    """CPU seconds per million rows to read the parts through pyarrow with page checksums (as
    carto reads them): every column, and the sketch's three columns alone (the default signal's
    reads), the best of `repeat`."""
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    found = {}
    for name, columns in (("all", None), ("sketch", list(SKETCH_WIDTHS))):
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            for path in paths:
                file = pq.ParquetFile(path, page_checksum_verification=True)
                file.read(columns=None if columns is None else [c for c in columns if c in file.schema_arrow.names])
            best = min(best, time.process_time() - start)
        found[name] = best / rows * 1e6
    return found


def measure(paths: list[Path]) -> dict:
    """Rows, bytes per presentation, and bytes per presentation of each column."""
    rows, total, columns = 0, 0, {}
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        rows += meta.num_rows
        total += path.stat().st_size
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                name = group.column(c).path_in_schema.split(".")[0]
                columns[name] = columns.get(name, 0) + group.column(c).total_compressed_size
    return {"rows": rows, "bytes_per_row": total / rows,
            "columns": {name: size / rows for name, size in columns.items()}}


def sketch_floor(tables: list[pa.Table]) -> dict:
    """Per sketch column: its values byte-transposed, xz -9e, bytes per presentation."""
    rows = sum(t.num_rows for t in tables)
    found = {}
    for name in SKETCH_WIDTHS:
        if name not in tables[0].column_names:
            continue
        values = np.concatenate([t.column(name).combine_chunks().values.to_numpy(zero_copy_only=False)
                                 for t in tables])
        planes = np.ascontiguousarray(values.view(np.uint8).reshape(len(values), -1).T).tobytes()
        found[name] = len(lzma.compress(planes, preset=9 | lzma.PRESET_EXTREME)) / rows
    return found


def write_cost(tables: list[pa.Table], repeat: int) -> dict:
    """CPU seconds per million rows of `before` and `carto`, into memory, the best of `repeat`."""
    rows = sum(t.num_rows for t in tables)
    found = {}
    for name, writer in (("before", before), ("carto", write_parquet)):
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            for table in tables:
                writer(table, io.BytesIO())
            best = min(best, time.process_time() - start)
        found[name] = best / rows * 1e6
    return found


def same_scores(original: Path, rewritten: Path, tmp: Path) -> bool:
    """Whether `carto score` writes the same scores (every column) for both directories, ranked by
    its default signal and by forget events."""
    import polars as pl

    for extra in ([], ["--memorization", "forgets"]):
        frames = []
        for i, logs in enumerate((original, rewritten)):
            out = tmp / f"scores-{i}-{len(extra)}.parquet"
            subprocess.run([*CARTO, "score", str(logs), "--out", str(out), *extra], check=True,
                           capture_output=True)
            frames.append(pl.read_parquet(out))
        if not frames[0].equals(frames[1]):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="*", type=Path, help="log directories (default: the sample and proto logs)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of the write-cost measurement")
    args = ap.parse_args()
    logs = args.logs or [p for p in DEFAULT_LOGS if p.exists()]
    print(f"command: python benchmarks/bench_logsize.py {' '.join(sys.argv[1:])}")
    print(f"carto: {json.dumps(carto_source())}; pyarrow {pa.__version__}; load {os.getloadavg()[0]:.2f}")
    results = {}
    for directory in logs:
        parts = sorted(directory.glob("*.parquet"))
        tables = [pq.read_table(p) for p in parts]
        found = {"as found": {**measure(parts), "read_cpu_s_per_million_rows": read_cost(parts, args.repeat)}}
        with tempfile.TemporaryDirectory() as tmp:
            for name, (writer, transform) in options(schema.TOKEN_LOSS in tables[0].column_names
                                                     and tables[0].column(schema.TOKEN_LOSS).null_count
                                                     < tables[0].num_rows).items():
                out = Path(tmp) / name.replace(" ", "_").replace(",", "")
                out.mkdir()
                for part, table in zip(parts, tables):
                    writer(table if transform is None else transform(table), out / part.name)
                written = sorted(out.glob("*.parquet"))
                found[name] = {**measure(written), "read_cpu_s_per_million_rows": read_cost(written, args.repeat)}
            identical = same_scores(directory, Path(tmp) / "carto", Path(tmp))
        results[str(directory)] = {"options": found, "sketch_floor_xz9": sketch_floor(tables),
                                   "write_cpu_s_per_million_rows": write_cost(tables, args.repeat),
                                   "scores_identical_after_rewrite": identical, "parts": len(parts)}
        show(directory, results[str(directory)])
    print(json.dumps({"logs": results}))
    return 0 if all(r["scores_identical_after_rewrite"] for r in results.values()) else 1


def show(directory: Path, result: dict) -> None:
    found = result["options"]
    columns = list(found["as found"]["columns"])
    print(f"\n{directory}: {found['as found']['rows']:,} presentations in {result['parts']} parts; "
          "bytes per presentation")
    print(f"{'option':<28} {'total':>7}  " + " ".join(f"{c[:10]:>10}" for c in columns)
          + f"  {'read all':>9} {'sketch':>7}")
    for name, m in found.items():
        read = m["read_cpu_s_per_million_rows"]
        print(f"{name:<28} {m['bytes_per_row']:>7.2f}  "
              + " ".join(f"{m['columns'].get(c, 0):>10.2f}" for c in columns)
              + f"  {read['all']:>9.3f} {read['sketch']:>7.3f}")
    print("(read all, sketch: CPU seconds per million rows to read every column, or the three sketch "
          "columns, with page checksums)")
    floor = result["sketch_floor_xz9"]
    print("sketch floor (xz -9e, byte-transposed): " + ", ".join(f"{k} {v:.2f}" for k, v in floor.items())
          + f"; sum {sum(floor.values()):.2f}")
    cost = result["write_cpu_s_per_million_rows"]
    print(f"write CPU s per million rows: before {cost['before']:.2f}, carto {cost['carto']:.2f}; "
          f"carto score identical on the rewritten parts: {result['scores_identical_after_rewrite']}")


if __name__ == "__main__":
    sys.exit(main())
