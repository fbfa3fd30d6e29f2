#!/usr/bin/env bash
# The shim's checks on a lent GPU machine, as one prepared run (docs/device-results/README.md):
#
#     bash benchmarks/device_shim.sh OUT_DIR
#
# A 110M-parameter GPT, a 32,000-word vocabulary, bf16 autocast, at 16 x 1,024 and 8 x 2,048 tokens
# per step, each with the default memorization sketch (its Triton kernel, then the PyTorch ops) and
# without it (`--no-sketch`), in turn.
# Every run also checks that `record` makes no synchronising CUDA call, returns while the GPU is
# busy, and logs the values (sketch included) of a float64 CPU reference. The machine's python3
# must have torch and Triton; carto_cli is imported from this checkout.
set -u
out=${1:?usage: bash benchmarks/device_shim.sh OUT_DIR}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
common="--device cuda --layers 12 --width 768 --vocab 32000 --bf16 --rounds 4 --steps 6 --repeat 3"
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  for shape in "--context 1024 --batch 16" "--context 2048 --batch 8"; do
    for sketch in "" "--sketch-ops torch" "--no-sketch"; do
      echo "== $shape $sketch"
      python3 benchmarks/bench_shim.py $common $shape $sketch 2>&1
    done
  done
} | tee "$out/shim-sketch-gpu.txt"
