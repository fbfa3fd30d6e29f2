"""Who writes a part: the training run, the attempt (one logger instance) and the rank, and the claim
that keeps one writer per (directory, run, rank) at a time.

A reader takes the attempts of one (run, rank) to follow each other, each resuming the one before
(`carto_cli.io.replays`). Two processes that log one rank of one run at the same time break that:
with `torch.multiprocessing.spawn`, a logger built before `init_process_group` and without `$RANK`
is rank 0 in every process. The shim re-resolves a rank it was not given at its first `record`
(then torch.distributed is usually initialised), and before writing claims (directory, run, rank):

- in this process, a set of the claims its open loggers hold;
- across processes, an exclusive POSIX record lock (`fcntl.lockf`) on a hidden file of the directory,
  `.carto-writer-r<rank>-<hash of the run id>.lock` (readers skip hidden names), removed when the
  logger closes. The kernel drops the lock when the process ends, however it ends, so a crashed
  attempt never blocks its resume (its file stays, unlocked, and is reused). POSIX locks are per
  process and not inherited by `fork` (DataLoader workers do not hold them); they work on local
  filesystems and on NFS; where the filesystem refuses locks (or on Windows, without `fcntl`) there
  is no check here and the reader's refusal of overlapping attempts remains.

A second claim fails in one line (`OptionError`) naming the holder and the fix: a rank that is right
or refused, never two writers taken for a crash and its resume.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

from carto_cli.errors import OptionError

try:
    import fcntl
except ImportError:  # Windows: no lock; the reader still refuses overlapping attempts
    fcntl = None  # type: ignore[assignment]

RUN_ID_ENV = "CARTO_RUN_ID"

_HELD: set[tuple[str, str, int]] = set()  # (resolved directory, run id, rank) claimed in this process
_HELD_LOCK = threading.Lock()


def default_run_id(out_dir: Path) -> str:
    """`$CARTO_RUN_ID`, else `<directory name>-<8 hex of the resolved path>`: the same for every rank
    and every restart that logs into the same directory, different for runs in other directories."""
    from_env = os.environ.get(RUN_ID_ENV)
    if from_env:
        return from_env
    resolved = str(Path(out_dir).resolve())
    return f"{Path(resolved).name or 'run'}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def new_attempt() -> tuple[str, int]:
    """(attempt id, start in nanoseconds) of a new logger: the start orders the run's attempts."""
    started_ns = time.time_ns()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{os.urandom(2).hex()}", started_ns


class Claim:
    """One writer's claim on (directory, run, rank); `release` (idempotent) gives it up."""

    def __init__(self, directory: Path, run_id: str, rank: int, attempt: str) -> None:
        self.key = (str(directory.resolve()), run_id, rank)
        self.path = directory / f".carto-writer-r{rank:05d}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}.lock"
        self._fd: int | None = None
        fix = ("pass rank= (under torch.multiprocessing.spawn, the process index), set $RANK, or call "
               "torch.distributed.init_process_group before the first record; if they are different runs, give "
               "each its own run_id")
        what = f"rank {rank} of run '{run_id}' in {directory}"
        with _HELD_LOCK:
            if self.key in _HELD:
                raise OptionError(f"CartoLogger.record: {what} is already being logged by another CartoLogger of "
                                  f"this process (close it first); two writers of one rank would be read as a crash "
                                  f"and its resume: {fix}")
            self._fd = _lock(self.path, f"{socket.gethostname()} pid {os.getpid()} attempt {attempt}")
            if isinstance(self._fd, str):  # held by another process: its description
                holder, self._fd = self._fd, None
                raise OptionError(f"CartoLogger.record: {what} is already being logged by another process "
                                  f"({holder}); two writers of one rank would be read as a crash and its resume: "
                                  f"{fix}")
            _HELD.add(self.key)

    def release(self) -> None:
        with _HELD_LOCK:
            if self.key not in _HELD:
                return
            _HELD.discard(self.key)
            if self._fd is not None:
                try:  # removed while still locked: a writer that opened it meanwhile sees it gone (`_lock`)
                    self.path.unlink()
                except OSError:
                    pass
                os.close(self._fd)  # drops the lock
                self._fd = None


def _lock(path: Path, holder: str) -> int | str | None:
    """The open, locked file's descriptor; the holder's description (a str) when another process
    holds the lock; None where no lock can be taken here (no fcntl, or a filesystem without locks)."""
    if fcntl is None:
        return None
    for _ in range(100):  # again only when the file was removed between our open and our lock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            return None  # the directory refuses the file: writing parts will say why
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # ENOLCK, EINVAL, ...: no locks on this filesystem
                os.close(fd)
                return None
            try:
                described = os.pread(fd, 300, 0).decode(errors="replace").strip() or "pid unknown"
            finally:
                os.close(fd)
            return described
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a file its last holder removed
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)  # for the message of a refused second writer
            return fd
        os.close(fd)
    return None
