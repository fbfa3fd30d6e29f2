#!/usr/bin/env bash
# `carto experiment --device cuda` on a lent GPU machine, as one prepared run (docs/experiment.md):
#
#     bash scripts/device_experiment.sh OUT_DIR [SEEDS] [FIRST_SEED] [JOBS] [LIMIT_S]
#
# That machine's python3 has torch, Triton, numpy, pyarrow, scipy and matplotlib but not Polars,
# and a Typer too old for carto's CLI: Polars' wheels travel in .whl/ (how to fetch them:
# docs/device-results/README.md) and the experiment is called through its Python API,
# `run_experiment(..., regime="data-rich-gpu")`, which is what `carto experiment --device cuda`
# calls. A quick smoke run on the GPU goes first; the real run follows only if it passes, and is
# stopped after LIMIT_S seconds (each finished run's record is kept in runs/ as it finishes).
# The results, the log and the records (runs/*.json, each seed's canaries.json; no Parquet: the
# device tool brings back files of at most 16 MiB) go to OUT_DIR.
#
# Time on an H200 (2026-11-30, 5 seeds, --jobs 8): the smoke run 35 s; the five baselines at once
# 66 s; then waves of eight arm runs at once, 55-85 s each. So 3 seeds (18 runs: one wave of
# baselines, two of arms) need about 4 minutes and 5 seeds (30 runs) about 6.
set -u
out=${1:?usage: bash scripts/device_experiment.sh OUT_DIR [SEEDS] [FIRST_SEED] [JOBS] [LIMIT_S]}
seeds=${2:-3}
first=${3:-4}
jobs=${4:-8}
limit=${5:-300}
device=${DEVICE:-cuda}  # DEVICE=cpu: try the script itself on a machine without a GPU
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
experiment() {  # OUT QUICK SEEDS FIRST JOBS DEVICE: run_experiment with a line per finished run
  # from a file, not stdin: --jobs > 1 spawns workers, which re-import the main module by its path
  cat > /tmp/carto_experiment.py <<'PY'
import sys, time
from carto_cli.experiment.run import run_experiment
def progress(description, completed, total):
    if int(completed) > done[0]:
        done[0] = int(completed)
        print(f"{done[0]}/{total} runs finished ({time.monotonic() - started:.0f} s)", flush=True)
if __name__ == "__main__":  # the spawned workers import this file too
    out, quick, seeds, first, jobs = sys.argv[1], sys.argv[2] == "quick", *map(int, sys.argv[3:6])
    started, done = time.monotonic(), [0]
    results = run_experiment(out, quick=quick, seeds=seeds, first_seed=first, frac=0.1, jobs=jobs,
                             device=sys.argv[6], regime="data-rich-gpu", progress=progress)
    for name, arm in results["arms"].items():
        print(f"{name:13s} extraction {arm['extraction_rate']['mean']:.0%}  val ppl {arm['val_ppl']['mean']:.4f}")
PY
  python3 /tmp/carto_experiment.py "$@"
}
{
  echo "# $(date -u +%FT%TZ); carto_cli sources sha256 $(python3 -c 'import sys; sys.path.insert(0, "benchmarks"); from common import carto_source; print(carto_source()["sha256"])')"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import sys, torch, triton, polars, pyarrow; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'polars', polars.__version__, 'pyarrow', pyarrow.__version__)"
  echo "== smoke: the quick configuration on $device, 1 seed, --jobs 2"
  experiment /tmp/smoke quick 1 0 2 "$device" || exit 1  # --jobs 2: spawned workers too
  echo "== data-rich-gpu: seeds $first-$((first + seeds - 1)), --jobs $jobs, at most $limit s"
  export -f experiment
  time timeout "$limit" bash -c "experiment /tmp/exp full $seeds $first $jobs $device"
} 2>&1 | tee "$out/run.log"
cp /tmp/exp/results.* "$out/" 2> /dev/null
tar czf "$out/records.tgz" -C /tmp/exp --exclude=logs --exclude=eval_logs --exclude='*.parquet' . 2> /dev/null
exit 0
