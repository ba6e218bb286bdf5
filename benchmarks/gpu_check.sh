#!/usr/bin/env bash
# The one prepared GPU check: CUDA tests, then BigGAN-deep-128 timings (docs/performance.md).
# The device has no network: carry the wheels of pytorch-pretrained-biggan, boto3, botocore,
# s3transfer, jmespath and gan-face-generate in .whl (see docs/performance.md); with diffusers and
# huggingface_hub there too, the diffusion family's CUDA test runs (else it is skipped).
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src
fi
export REGPRIM_CACHE="$OUT/cache"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
python3 benchmarks/gpu_biggan.py --out "$OUT" 2>&1 | grep -v Warning | tail -8
