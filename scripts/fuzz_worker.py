"""The worker process of scripts/fuzz_logs.py, and its client (`Worker`).

    python scripts/fuzz_worker.py    # reads jobs, one JSON line each, on stdin

A job runs carto's command line in this process (`main()`, its stdout and stderr captured, the
exit status or the traceback a user would see kept), or reads parts with pyarrow, page checksums
verified, each column on its own (`read_columns`: the fuzz's oracle). Each answer is one line on
stdout after MARK. The client starts the worker on first use and again after it dies: a signal or
a hang (no answer within its timeout, then it is killed) is an answer too.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

MARK = "@@fuzz "  # the worker's answers start with this (anything else on its stdout is ignored)


def worker() -> None:
    """Answer the parent's jobs, one JSON line each: run carto's CLI in this process, or read parts."""
    import contextlib
    import io
    import traceback

    from carto_cli.cli.app import main
    from carto_cli.score import extract

    kernel = extract.extractable
    for line in sys.stdin:
        job = json.loads(line)
        if job["op"] == "read":
            answer = read_columns([Path(p) for p in job["paths"]])
        else:
            os.environ.pop("CARTO_NO_COMPILED", None)
            os.environ.update(job.get("env", {}))
            # the reference: the signal's Polars definition (the kernel declines)
            extract.extractable = (lambda *a, **k: None) if job.get("reference") else kernel
            out, err = io.StringIO(), io.StringIO()
            sys.argv = ["carto", *job["argv"]]
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main()
                    rc = 0
                except SystemExit as exc:
                    rc = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                except BaseException:  # what a user would see: the traceback
                    traceback.print_exc()
                    rc = 1
            answer = {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}
        sys.stdout.write(MARK + json.dumps(answer) + "\n")
        sys.stdout.flush()


def read_columns(paths: list[Path]) -> dict:
    """What pyarrow reads of each part, each column on its own, page checksums verified: {path:
    {column: values, or the error as a string}}, or {path: error} when the footer cannot be read."""
    found: dict = {}
    for path in paths:
        try:
            file = pq.ParquetFile(path, page_checksum_verification=True)
        except Exception as exc:
            found[str(path)] = f"{type(exc).__name__}: {exc}"
            continue
        found[str(path)] = {}
        for name in file.schema_arrow.names:
            try:
                column = file.read(columns=[name]).column(0)
                found[str(path)][name] = [None if v is None else v for v in column.to_pylist()]
            except Exception as exc:
                found[str(path)][name] = f"{type(exc).__name__}: {exc}"
    return found


class Worker:
    """The worker process, started on first use and again after it dies or hangs."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def ask(self, job: dict) -> dict:
        """The worker's answer; {"signal": n} if it died, {"hang": True} if it did not answer in time."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.log, env=os.environ.copy())
            self.buffer = b""
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line.startswith(MARK.encode()):
                    return json.loads(line[len(MARK):])
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.stop()
                return {"hang": True}
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # it died
                code = self.proc.wait()
                self.proc = None
                return {"signal": -code if code < 0 else code}
            self.buffer += chunk

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


if __name__ == "__main__":
    worker()
