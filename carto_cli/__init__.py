"""carto: generative data cartography over per-sample training logs.

The public API (what users import; the modules behind it may move):

    from carto_cli import CartoLogger                      # log from a training loop (needs torch)
    from carto_cli import score_logs                       # scores as a Polars frame, in a notebook
    from carto_cli import kept_subset, weighted_sampler    # feed a manifest or weights to the next run

Importing carto_cli imports neither torch nor Polars (nor numpy or pyarrow): every name but
`CartoError` loads its module when first used, and `CartoLogger` needs torch at `record` time only.
"""

from __future__ import annotations

from typing import Any

from carto_cli.errors import CartoError
from carto_cli.version import __version__

# name -> module that defines it, imported on first use (PEP 562)
_LAZY = {
    "CartoLogger": "carto_cli.log.shim",
    "score_logs": "carto_cli.engines.pipeline",
    "kept_indices": "carto_cli.export.sampling",
    "kept_subset": "carto_cli.export.sampling",
    "sample_weight_array": "carto_cli.export.sampling",
    "weighted_sampler": "carto_cli.export.sampling",
}

__all__ = ["CartoError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'carto_cli' has no attribute '{name}'")
