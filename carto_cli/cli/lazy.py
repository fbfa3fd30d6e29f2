"""Modules imported when first used, so that `carto --help` (and a bad option) answers at once.

Polars, pyarrow and numpy take about 0.3 s to import, carto's scoring and report modules more on
top; `carto --help`, `carto --version` and a mistyped option need none of them. The CLI modules
name what they use as `name = lazy("module")`: a stand-in whose first attribute access imports the
module (later ones are a dictionary lookup in `sys.modules`). Only attribute access is deferred, so
a stand-in must not be passed where the module object itself is needed.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module, imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> Any:
    """A stand-in for the module `name` (see the module docstring)."""
    return LazyModule(name)
