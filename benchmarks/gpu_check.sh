#!/usr/bin/env bash
# The GPU measurements issues 2 and 8 ask for, as one prepared run (at most 9 minutes: every
# step has its own timeout, 120 + 2 x 90 + 90 + 120 s). Run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Wheels in ./.whl are installed first: the H200 machine lacks POT, which the
# reference needs; fetch it with pip download (see benchmarks/README.md). Writes JSON tables and a log
# to OUTDIR (default benchmarks/results).
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
log=$out/gpu_check.log
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
    # 1. Exactness on the GPU: the auction's certificate against scipy and optax,
    #    and the score against the float64 PyTorch reference (auction is "auto" here).
    timeout 120 python3 -m pytest -q -x -n 0 -p no:cacheprovider \
        tests/solvers tests/test_score.py tests/math tests/test_precision.py
    # 2. The target: n = 2048, d = 512, vmapped over 16, auction and host solvers.
    for solver in auction host; do
        timeout 90 python3 benchmarks/bench_score.py --n 2048 --d 512 --batch 16 \
            --reps 3 --solver "$solver" --out "$out/score_h200_$solver.json"
    done
    # 3. The rest of the grid with the default solver.
    timeout 90 python3 benchmarks/bench_score.py --n 256 1024 2048 --d 64 512 \
        --batch 16 --reps 3 --out "$out/score_h200_grid.json"
    # 4. Numerics (issue 8.6): resnet18 signature, batch 256, forward at highest and at the
    #    GPU's default (TF32 convolutions) against the CPU float64 result, per call.
    timeout 120 python3 benchmarks/precision_check.py --model resnet18 --n 256 --size 224 \
        --out "$out/precision_h200.json"
} 2>&1 | tee "$log"
