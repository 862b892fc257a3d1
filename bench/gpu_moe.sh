#!/usr/bin/env bash
# One device call (<= 50 + DECODE_SWEEP_S + 70 s): MoE GPU tests, the decode experts' launch sweep
# (bench_decode_moe.py, DECODE_SWEEP_S, default 60 s; 0 skips it), then, unless MOE_BENCH=0, bench_moe.py at the
# 1b-a150m and official shapes (fused paths vs grouped_mm peer vs dense GEMM of the same FLOPs, CUDA-graph rows,
# per-kernel profile at 1b). Results -> $OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY="python3 -P"
SWEEP_S=${DECODE_SWEEP_S:-60}
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
echo "=== gpu tests (moe)"
timeout 50 python3 -m pytest -p no:cacheprovider --import-mode=importlib -q -m "not slow" -s \
  tests/kernels/test_moe_gpu.py 2>&1 | grep -v -i warn | tail -30 \
  | tee "$OUT/moe_gpu_tests.log"
if [ "$SWEEP_S" != 0 ]; then
  echo "=== bench_decode_moe"
  timeout $((SWEEP_S + 15)) $PY bench/bench_decode_moe.py --rows 64 --budget-s "$SWEEP_S" --out "$OUT/decode_moe.json" \
    2>&1 | grep -v -i warn | tee "$OUT/decode_moe.log" | tail -12
fi
if [ "${MOE_BENCH:-1}" != 0 ]; then
  echo "=== bench_moe"
  timeout 66 $PY bench/bench_moe.py --profile --out "$OUT/moe.json" 2>&1 | grep -v -i warn | tee "$OUT/moe_bench.log" \
    | tail -80
fi
