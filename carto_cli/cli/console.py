"""The Rich console every command prints to: stderr, so stdout stays for data (`--json`)."""

from __future__ import annotations

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
if not err.is_terminal:  # pipes and files: Rich would assume 80 columns and truncate the tables
    err.width = 120
