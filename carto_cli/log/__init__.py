"""Writing logs: the log contract (`schema`), the logging shim (`shim.CartoLogger`), its writer
thread (`writer`), who writes (`attempt`: runs, attempts, one writer per rank), its Triton kernels
(`fused` launches them, `triton_kernels` holds them) and atomic part writes (`durable`).
Never imports Polars: a training process pays only for torch and pyarrow."""
