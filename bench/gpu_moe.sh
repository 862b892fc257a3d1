#!/usr/bin/env bash
# One device call (<= 50 + DECODE_SWEEP_S + 70 + 60 s): MoE GPU tests, the decode experts' launch sweep
# (bench_decode_moe.py, DECODE_SWEEP_S, default 60 s; 0 skips it), then, unless MOE_BENCH=0, bench_moe.py at the
# 1b-a150m and official shapes (fused paths vs grouped_mm peer vs dense GEMM of the same FLOPs, CUDA-graph rows,
# per-kernel profile at 1b), and unless MOE_HOST=0 bench_moe_host.py (the eager block's host time by piece).
# Results -> $OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY="python3 -P"
NOISE="Warning: |warnings.warn|warn_once"  # warning lines, not pytest's "8 passed, 2 warnings" summary
SWEEP_S=${DECODE_SWEEP_S:-60}
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
if [ "${MOE_TESTS:-1}" != 0 ]; then  # MOE_TESTS=0: skip them (bench/gpu_tests.sh runs them too)
  echo "=== gpu tests (moe)"
  timeout 50 python3 -m pytest -p no:cacheprovider --import-mode=importlib -q -m "not slow" -s \
    tests/kernels/test_moe_gpu.py 2>&1 | grep -v -E "$NOISE" | tail -30 \
    | tee "$OUT/moe_gpu_tests.log"
fi
if [ "$SWEEP_S" != 0 ]; then
  echo "=== bench_decode_moe"
  timeout $((SWEEP_S + 15)) $PY bench/bench_decode_moe.py --rows 64 --budget-s "$SWEEP_S" --out "$OUT/decode_moe.json" \
    2>&1 | grep -v -E "$NOISE" | tee "$OUT/decode_moe.log" | tail -12
fi
if [ "${MOE_BENCH:-1}" != 0 ]; then
  echo "=== bench_moe"
  timeout 66 $PY bench/bench_moe.py --profile --out "$OUT/moe.json" 2>&1 | grep -v -E "$NOISE" \
    | tee "$OUT/moe_bench.log" \
    | tail -80
fi
if [ "${MOE_HOST:-1}" != 0 ]; then  # where the eager block's host time goes (1b-a150m is bound by its launches)
  echo "=== bench_moe_host"
  timeout 60 $PY bench/bench_moe_host.py --out "$OUT/moe_host.json" 2>&1 | grep -v -E "$NOISE" \
    | tee "$OUT/moe_host.log" \
    | tail -60
fi
