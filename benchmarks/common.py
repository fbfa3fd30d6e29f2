"""Helpers shared by the benchmark scripts in this folder (not part of the carto package).

The scripts are run as files (`python benchmarks/<script>.py`), so Python puts this folder on
`sys.path` and they import this module as `common`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import resource
import signal
import subprocess
import tempfile
import time
from pathlib import Path

# Generated workloads live outside the repository.
DATA_ROOT = Path("/work/bench_data")

# The log columns every contender reads, and the difficulty window (`carto score` default).
LOG_COLUMNS = ("sample_id", "epoch", "step", "loss", "correct")
EARLY_EPOCHS = 2


def default_logs_dir(samples: int, epochs: int) -> Path:
    return DATA_ROOT / f"logs-{samples}x{epochs}"


def quadrant_checks(thresholds: dict, suffix: str) -> dict:
    """Polars expressions over two scores files joined on sample_id (the other's columns named with
    `suffix`): the samples whose quadrants differ, and those of them not at one of carto's
    `thresholds` (DuckDB's quantile_disc takes the lower middle value at an even count, Polars'
    "nearest" quantile the upper one, so a sample exactly at a threshold may be placed apart)."""
    import polars as pl

    differ = pl.col("quadrant").ne_missing(pl.col(f"quadrant{suffix}"))
    return {"quadrant_mismatches": differ.sum(),
            "quadrant_mismatches_off_threshold": (differ & (pl.col("difficulty") != thresholds["difficulty"])
                                                  & (pl.col("memorization") != thresholds["memorization"])).sum()}


def encoding_tag() -> str:
    """A short digest of the shim's Parquet encodings (`carto_cli.log.writer.column_encodings`), for
    the names of generated logs: a log written with other encodings is not silently reused."""
    import json

    from carto_cli.log import schema
    from carto_cli.log.writer import column_encodings

    text = json.dumps(column_encodings(schema.LOG_SCHEMA), sort_keys=True)
    return "enc" + hashlib.sha256(text.encode()).hexdigest()[:6]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def dir_size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def carto_source() -> dict[str, str | None]:
    """Which carto_cli would be imported (without importing it): its folder, a sha256 of its
    sources (the .py files and, since the compiled kernels, the .c and .h files), and the git commit of the
    checkout it lives in (with "+dirty" when it is modified).

    The repository changes while benchmarks run; this says which code a number belongs to.
    """
    spec = importlib.util.find_spec("carto_cli")
    if spec is None or spec.origin is None:
        return {"path": None, "sha256": None, "git": None}
    package = Path(spec.origin).parent
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.c"), *package.rglob("*.h")]):  # C sources too
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    git = None
    try:
        head = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
        git = head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass  # not a git checkout (e.g. a scratch copy)
    return {"path": str(package), "sha256": digest.hexdigest()[:16], "git": git}


def measure_command(argv: list[str], *, timeout: float, stdout, stderr) -> tuple[float, float, float, int | None]:
    """Run argv in a fresh process group; return (wall s, CPU s, peak RSS MiB, exit code or None
    on timeout). Peak RSS comes from wait4 on the child, the counter `/usr/bin/time -v` reads."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, start_new_session=True)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.02)
    wall = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, None if timed_out else code


def run_step(name: str, argv: list[str], timeout: float, *, tail: int = 3, width: int = 10) -> dict:
    """Run one CLI step in its own process (`measure_command`), print its wall time, CPU time, peak
    RSS and the last `tail` lines of its stderr; return them with its status."""
    with tempfile.TemporaryFile("w+") as err:
        wall, cpu, rss, code = measure_command(argv, timeout=timeout, stdout=subprocess.DEVNULL, stderr=err)
        err.seek(0)
        lines = err.read().strip().splitlines()[-tail:]
    status = "ok" if code == 0 else ("timeout" if code is None else f"exit status {code}")
    print(f"{name:{width}s} {status:10s} wall {wall:8.2f} s  cpu {cpu:8.2f} s  peak RSS {rss:9,.0f} MiB")
    for line in lines:
        print(f"    {line}")
    return {"status": status, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss}
