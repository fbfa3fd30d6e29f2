"""Profile where `carto score` spends its time and memory, phase by phase.

    python benchmarks/profile_score.py --logs /work/bench_data/logs-10000000x4
    python benchmarks/profile_score.py --logs DIR --engine in-memory -- --method general

Runs `carto score LOGS --out <tmp> [extra options after --]` in this process through the CLI's
entry point (`carto_cli.cli:main`), and reports:

1. Every Polars/Arrow materialisation (LazyFrame.collect, pl.collect_all, sink_parquet,
   DataFrame.write_parquet, pyarrow.parquet.write_table), outermost calls only, with the carto
   function and line that made it, its wall time, the process's CPU time (user + system, every
   thread) during it, and the peak RSS during it (sampled every 10 ms). Eager DataFrame
   operations (with_columns, sort, ... on a DataFrame) do not pass through these calls in
   Polars 2, nor does Python-side work such as reading the Parquet footers in open_logs: their
   time shows in part 2.
2. cProfile's cumulative time of the carto_cli functions (the phases: open_logs, prepare /
   _preflight, the per-sample state, finalize, quadrants, writing).

`--engine` sets Polars' default engine (POLARS_ENGINE_AFFINITY) for the run; carto's code is
unchanged. The instrumentation hooks the libraries, not carto, so it follows carto's code as it
changes; its overhead is a few microseconds per call.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import linecache
import os
import pstats
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import carto_source, current_rss_mib, peak_rss_mib


class RssSampler(threading.Thread):
    """Samples this process's RSS every `interval` seconds; `reset()` starts a new peak."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = current_rss_mib()
        self._done = threading.Event()

    def reset(self) -> None:
        self.peak = current_rss_mib()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, current_rss_mib())

    def stop(self) -> None:
        self._done.set()


@dataclass
class Call:
    op: str
    caller: str
    code: str
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    rss_after_mib: float


def carto_caller(package_dir: str) -> tuple[str, str]:
    """('module.function:line', source line) of the innermost carto_cli frame on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(package_dir):
            module = Path(path).stem
            code = linecache.getline(path, frame.f_lineno).strip()
            return f"{module}.{frame.f_code.co_name}:{frame.f_lineno}", code
        frame = frame.f_back
    return "(outside carto_cli)", ""


def trace_materialisations(package_dir: str, sampler: RssSampler) -> list[Call]:
    """Wrap the libraries' materialising calls; returns the list the calls are appended to."""
    import polars as pl
    import pyarrow.parquet as pq

    calls: list[Call] = []
    depth = 0

    def wrap(owner: object, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def traced(*args, **kwargs):
            nonlocal depth
            if depth:  # nested inside a traced call: counted by the outer one
                return original(*args, **kwargs)
            caller, code = carto_caller(package_dir)
            sampler.reset()
            depth += 1
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed, used = time.perf_counter() - start, time.process_time() - cpu
                depth -= 1
                rss = current_rss_mib()
                calls.append(Call(f"{getattr(owner, '__name__', owner)}.{name}", caller, code,
                                  elapsed, used, max(sampler.peak, rss), rss))

        setattr(owner, name, traced)

    for owner, name in ((pl.LazyFrame, "collect"), (pl.LazyFrame, "sink_parquet"), (pl, "collect_all"),
                        (pl.DataFrame, "write_parquet"), (pq, "write_table")):
        wrap(owner, name)
    return calls


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, required=True, help="log directory")
    parser.add_argument("--engine", choices=("auto", "streaming", "in-memory"), default=None,
                        help="Polars default engine for the run (default: Polars' own default)")
    parser.add_argument("--top", type=int, default=20, help="carto functions to list from cProfile")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.engine:
        os.environ["POLARS_ENGINE_AFFINITY"] = args.engine  # read when polars is imported
    print(f"command: python benchmarks/profile_score.py {' '.join(sys.argv[1:])}")
    print(f"carto_cli: {carto_source()}; load {os.getloadavg()[0]:.2f}", flush=True)

    import polars as pl

    import carto_cli
    from carto_cli import cli

    package_dir = str(Path(carto_cli.__file__).parent)
    sampler = RssSampler()
    sampler.start()
    calls = trace_materialisations(package_dir, sampler)
    rss_start = current_rss_mib()

    with tempfile.TemporaryDirectory(prefix="carto-profile-") as tmp:
        sys.argv = ["carto", "score", str(args.logs), "--out", str(Path(tmp) / "scores.parquet"), *extra]
        profiler = cProfile.Profile()
        start, cpu = time.perf_counter(), time.process_time()
        profiler.enable()
        try:
            cli.main()
        except SystemExit as exc:
            if exc.code:
                raise
        finally:
            profiler.disable()
        total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    sampler.stop()

    engine = os.environ.get("POLARS_ENGINE_AFFINITY", "default (auto)")
    print(f"\ncarto score {' '.join(sys.argv[2:])}\n  carto_cli from {package_dir}; polars {pl.__version__}, "
          f"engine {engine}; total {total:.2f} s, CPU {total_cpu:.2f} s; RSS {rss_start:,.0f} MiB after imports, "
          f"peak {peak_rss_mib():,.0f} MiB\n")

    print("1. Materialisations (outermost), in order")
    print(f"{'#':>3} {'seconds':>8} {'CPU s':>6} {'peak RSS':>9} {'RSS after':>9}  {'op':<28} caller / code")
    for i, call in enumerate(calls, 1):
        print(f"{i:>3} {call.seconds:>8.2f} {call.cpu_seconds:>6.2f} {call.peak_rss_mib:>9,.0f} "
              f"{call.rss_after_mib:>9,.0f}  {call.op:<28} {call.caller}\n{'':>69}{call.code[:90]}")
    traced = sum(c.seconds for c in calls)
    print(f"    traced {traced:.2f} s of {total:.2f} s; the other {total - traced:.2f} s is untraced: eager "
          "DataFrame operations and Python-side work (see part 2)\n")

    print(f"2. cProfile: cumulative seconds of carto_cli functions (top {args.top})")
    stats = pstats.Stats(profiler)
    rows = [(cum, calls_n, f"{Path(file).stem}.{func}:{line}")
            for (file, line, func), (_, calls_n, _, cum, _) in stats.stats.items()
            if file.startswith(package_dir)]
    for cum, calls_n, name in sorted(rows, reverse=True)[:args.top]:
        print(f"{cum:>8.2f} s  {calls_n:>6}x  {name}")


if __name__ == "__main__":
    main()
