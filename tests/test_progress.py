"""Progress on long work: drawn on stderr when it is a terminal, and nothing at all otherwise.

Each command runs twice in a subprocess: once with stderr on a pseudo-terminal (what a person at a
shell sees, where Rich draws a transient progress display), once with stderr on a pipe (scripts,
CI logs), where the output must hold no progress text.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE_LOGS = Path(__file__).resolve().parents[1] / "sample_logs"


def stderr_of(argv: list[str], *, terminal: bool, cwd: Path) -> str:
    """Run `carto argv` and return what it wrote to stderr (a pty's bytes when `terminal`)."""
    command = [sys.executable, "-m", "carto_cli.cli", *argv]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("CI", None)  # Rich treats some CI variables as "not interactive"
    if not terminal:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("terminal", [True, False])
def test_score_and_map_show_progress_only_on_a_terminal(tmp_path: Path, terminal: bool) -> None:
    score = stderr_of(["score", str(SAMPLE_LOGS), "--out", "scores.parquet"], terminal=terminal, cwd=tmp_path)
    assert "wrote scores.parquet" in score
    assert ("checking log parts" in score) is terminal
    assert ("scoring 20,250 rows" in score) is terminal
    pytest.importorskip("matplotlib", reason="carto map needs the plot extra")
    drawn = stderr_of(["map", "--out", "map.png"], terminal=terminal, cwd=tmp_path)
    assert "wrote map.png" in drawn
    assert ("drawing the map of scores.parquet" in drawn) is terminal
