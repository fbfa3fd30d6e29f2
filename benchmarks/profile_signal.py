"""Where the `extractable` signal's time goes on a sketched log, in CPU seconds (every thread).

    python benchmarks/profile_signal.py --logs /work/bench_data/sketch-k10r6-<tag>-10000000x4 [--repeat 3]

In this process, the best of `--repeat` rounds of each step, CPU time (user + system, all
threads; the machine is shared, so CPU time is the steadier measure):

- `decode late` / `decode early`: reading and decoding, through pyarrow with page checksums, the
  columns and row groups the signal's two passes read (`extract._batches`, the late pass's row
  groups all read: no group left unread), and nothing else: the floor of any kernel over this
  log in this format;
- `signal`: the whole signal (`extract.extractable`, as `carto score` runs it), with the time of
  its compiled loops (`late_runs`, `early_sums`, thread CPU of the calling thread) beside it;
- `dense pass`: the forget-event path's own pass over the log (`dense.accumulated`), for scale.

First lines: the command, the carto commit and the load average; last line: a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import carto_source


def cpu(function) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"command: python benchmarks/profile_signal.py {' '.join(sys.argv[1:])}")
    print(f"carto: {json.dumps(carto_source())}; load {os.getloadavg()[0]:.2f}", flush=True)

    from carto_cli.engines import plan as planner
    from carto_cli.io.logs import open_logs
    from carto_cli.log import schema
    from carto_cli.score import compiled, dense, extract
    from carto_cli.score.rules import ScoreParams

    logset = open_logs([args.logs])
    early = 2
    late_columns = [schema.SAMPLE_ID, schema.EPOCH, schema.STEP, schema.HIT_RUNS]
    early_columns = [schema.SAMPLE_ID, schema.EPOCH, schema.TOP_POS, schema.TOP_LOSS]

    def decode(columns, epochs):
        for _ in extract._batches(logset, columns, True, epochs=epochs):
            pass

    loops, spent = compiled.extract_loops(), {}

    class Timed:  # the compiled loops, timed on the thread that calls them
        def __getattr__(self, name):
            function = getattr(loops, name)

            def timed(*a):
                start = time.thread_time()
                try:
                    return function(*a)
                finally:
                    spent[name] = spent.get(name, 0.0) + time.thread_time() - start
            return timed

    compiled.extract_loops = lambda: Timed()
    params = ScoreParams(memorization="forgets")
    kernel = planner.plan(logset, planner.resolve_signal(logset, params)).kernel
    steps = {
        "decode late": lambda: decode(late_columns, (early, None)),
        "decode early": lambda: decode(early_columns, (None, early)),
        "signal": lambda: extract.extractable(logset, early_epochs=early, drop_nonfinite=True),
        "dense pass": lambda: dense.accumulated(logset, kernel),
    }
    best: dict[str, float] = {}
    loop_cpu: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, step in steps.items():
            spent.clear()
            took = cpu(step)
            if took < best.get(name, float("inf")):
                best[name] = took
                if name == "signal":
                    loop_cpu = dict(spent)
    rows = logset.num_rows
    for name, value in best.items():
        extra = ""
        if name == "signal":
            extra = "  (" + ", ".join(f"{k} {v:.2f} s" for k, v in loop_cpu.items()) + ")"
        print(f"{name:<14} {value:7.2f} s CPU{extra}")
    print(f"decoding the sketch's passes: {best['decode late'] + best['decode early']:.2f} s CPU, "
          f"{(best['decode late'] + best['decode early']) / best['dense pass']:.2f} x the dense pass's; the signal "
          f"{best['signal'] / best['dense pass']:.2f} x")
    print(json.dumps({"logs": str(args.logs), "rows": rows, "repeat": args.repeat, "best_cpu_s": best,
                      "signal_loops_cpu_s": loop_cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
