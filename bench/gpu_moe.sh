#!/usr/bin/env bash
# One device call (≤ 120 s): MoE GPU tests, then bench_moe.py at the 1b-a150m and official shapes (fused paths vs
# grouped_mm peer vs dense GEMM of the same FLOPs, CUDA-graph rows, per-kernel profile at 1b). Results -> $OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY="python3 -P"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
echo "=== gpu tests (moe)"
timeout 50 python3 -m pytest -p no:cacheprovider --import-mode=importlib -q -m "not slow" -s \
  tests/kernels/test_moe_gpu.py 2>&1 | grep -v -i warn | tail -30 \
  | tee "$OUT/moe_gpu_tests.log"
echo "=== bench_moe"
timeout 66 $PY bench/bench_moe.py --profile --out "$OUT/moe.json" 2>&1 | grep -v -i warn | tee "$OUT/moe_bench.log" \
  | tail -80
