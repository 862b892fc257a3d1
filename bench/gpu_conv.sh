#!/usr/bin/env bash
# One device call (<= 40 + 120 s): the short convolution's GPU tests (mixlab's Triton kernels against the torch
# reference on CUDA), then bench_short_conv.py (mixlab vs fla-core vs torch, as CUDA graphs and eager, 8k and 16k
# tokens at the 1b-a150m shape; CONV_ARGS=--sweep adds the dx-kernel grid sweep). Results -> $OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 40 python3 -m pytest -p no:cacheprovider --import-mode=importlib -q -k "short_conv or conv" \
  tests/kernels/test_fused_triton.py tests/kernels/test_kernels_gpu.py 2>&1 | tail -5 | tee "$OUT/conv_gpu_tests.log"
timeout 120 python3 -P bench/bench_short_conv.py ${CONV_ARGS:-} --out "$OUT/short_conv.json" 2>&1 \
  | grep -v -E "Warning: |warnings.warn|warn_once" | tee "$OUT/short_conv.log" | tail -12
