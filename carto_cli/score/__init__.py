"""What is computed: per-sample scores as pure functions over columns and frames. Correctness
rules and parameters (`rules`), per-sample state and the Polars kernels (`state`), the dense-id
kernel (`dense`), memorization signals (`signals`), quadrants, fixed-point sums. Never imports
torch, and never decides where or how a log is reduced (that is `carto_cli.engines`)."""
