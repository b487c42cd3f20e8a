#!/usr/bin/env bash
# GPU rows of docs/benchmarks.md ("Scale-out on a GPU"): a FLUX.1-dev-sized bf16 transformer, eager
# and with compile_repeated_blocks, and with torchao int8 / float8 weight-only quantization, each
# with the cache off and on (benchmarks/scaleout_gpu.py). At most 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh fetch       # on a machine with PyPI: the wheels the GPU image lacks,
#                                            # into .whl/ (ignore it: echo /.whl/ >> "$(git rev-parse --git-path info/exclude)")
#   bash benchmarks/gpu_check.sh [OUT_DIR]   # on the GPU machine ($OUT, else bench_out/gpu)
#
# The GPU image has torch, transformers, safetensors and huggingface_hub but not diffusers or
# torchao; the package itself is used from this checkout (PYTHONPATH), nothing is downloaded there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WHEELS=(diffusers==0.42.1 torchao==0.18.0 importlib_metadata==10.2.0)

if [ "${1:-}" = fetch ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    exit 0
fi

OUT_DIR=${1:-${OUT:-bench_out/gpu}}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch, diffusers, torchao; print('torch', torch.__version__, 'diffusers',
diffusers.__version__, 'torchao', torchao.__version__)" 2>&1 | grep -v "^W" | tee -a "$OUT_DIR/gpu.txt"
# 420 s for the variants (the script skips the ones left when its budget is spent), 60 s margin.
timeout 480 python3 benchmarks/scaleout_gpu.py --out "$OUT_DIR" --budget-s 360 --steps 28 \
    2>&1 | tee "$OUT_DIR/gpu_check.log"
