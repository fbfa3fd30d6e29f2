"""carto: generative data cartography over per-sample training logs.

`CartoLogger` (the shim) needs torch at `record` time only; importing carto_cli does not import torch.
"""

__version__ = "0.1.0.dev0"

from carto_cli.errors import CartoError  # noqa: E402
from carto_cli.shim import CartoLogger  # noqa: E402

__all__ = ["CartoError", "CartoLogger", "__version__"]
