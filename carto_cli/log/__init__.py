"""Writing logs: the log contract (`schema`), the logging shim (`shim.CartoLogger`), its Triton
kernel (`fused`) and atomic part writes (`durable`). Never imports Polars: a training process pays
only for torch and pyarrow."""
