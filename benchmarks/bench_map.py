"""`carto map` on many samples: whole-process time and peak memory of the binned density.

    python benchmarks/bench_map.py --samples 100000000      # 1e8 samples (writes ~1.5 GB once)
    python benchmarks/bench_map.py --samples 1000000 --repeat 3

Writes a scores file shaped as `carto score` writes it (the columns a scores file must have,
random values, zstd, in row groups of 1M) under /work/bench_data once, then runs
`carto map --scores FILE --out map.png` in its own process `--repeat` times and prints wall time
and peak RSS (wait4), with the file's size and the samples' in-memory size beside them: the map is
aggregated by Polars from the file, so its peak should not grow with the samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import DATA_ROOT, carto_source, run_step

CARTO = [sys.executable, "-c", "from carto_cli.cli import main; main()"]


def write_scores(path: Path, samples: int, seed: int = 0) -> None:
    from carto_cli.io.artifacts import PROVENANCE_KEY, provenance

    prov = provenance("scores", inputs=[], parameters={"benchmark": "bench_map.py"},
                      thresholds={"difficulty": 2.5, "memorization": 1.0}, memorization="random values")
    schema = pa.schema([("sample_id", pa.int64()), ("difficulty", pa.float64()), ("memorization", pa.float64()),
                        ("forget_events", pa.int64()), ("n_seen", pa.int64()), ("quadrant", pa.string())],
                       metadata={PROVENANCE_KEY: json.dumps(prov)})
    rng = np.random.default_rng(seed)
    names = np.array(["stable-easy", "ambiguous-hard", "hotspot-memorized", "noisy-outlier"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, samples, 1_000_000):
            n = min(1_000_000, samples - start)
            d, m = rng.normal(2.5, 0.5, n), rng.exponential(1.0, n)
            quadrant = names[(d > 2.5).astype(int) + 2 * (m > 1.0).astype(int)]
            writer.write_table(pa.table({"sample_id": np.arange(start, start + n), "difficulty": d,
                                         "memorization": m, "forget_events": np.zeros(n, dtype=np.int64),
                                         "n_seen": np.full(n, 4), "quadrant": quadrant}, schema=schema))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100_000_000)
    ap.add_argument("--scores", type=Path, help="the scores file (written there if missing)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    scores = args.scores or DATA_ROOT / f"scores-{args.samples}.parquet"
    if not scores.exists():
        write_scores(scores, args.samples)
    print(f"scores: {scores} ({scores.stat().st_size / 2**20:,.0f} MiB on disk, "
          f"{args.samples * 40 / 2**20:,.0f} MiB as five numeric columns in memory); "
          f"carto: {json.dumps(carto_source())}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            runs.append(run_step("carto map", [*CARTO, "map", "--scores", str(scores), "--out", f"{tmp}/map.png"],
                                 args.timeout, tail=2))
    ok = all(r["status"] == "ok" for r in runs)
    result = {"samples": args.samples, "best_wall_s": min(r["wall_s"] for r in runs),
              "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "ok": ok}
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
