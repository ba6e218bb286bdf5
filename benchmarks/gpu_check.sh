#!/usr/bin/env bash
# The one prepared GPU check: CUDA tests, then BigGAN-deep-128 timing (docs/performance.md).
# On a machine without network: carry the wheels of pytorch-pretrained-biggan, boto3, botocore,
# s3transfer, jmespath and gan-face-generate in .device/wheels.
set -euo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
if [ -d .device/wheels ]; then
  python3 -m pip install --no-index --no-deps -q .device/wheels/*.whl
fi
export PYTHONPATH=src REGPRIM_CACHE="$OUT/cache"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5
python3 benchmarks/gpu_biggan.py --out "$OUT/biggan" 2>&1 | grep -v Warning | tail -8
