#!/usr/bin/env bash
# Issue 11, KDA: mixlab's Triton chunked KDA on the GPU, in one device call (≤ 340 s; SWEEP_S, ISSUE_S).
#   1. GPU tests (Kimi shapes, fp32 and bf16, [B, T] and varlen) against the pure-torch chunked reference;
#   2. a sweep of mixlab's launch options at T=8k (mixlab only: its numbers arrive even if fla's compile is slow);
#   3. forward / forward+backward at H=32, K=V=128, 16k tokens per batch, T = 2k / 8k / 32k: mixlab vs fla-core
#      chunk_kda vs the torch reference, relative errors of each against the reference, GPU time per kernel.
# Prints the ratio fla/mixlab per T and the errors; JSON and logs go to $OUT (default /tmp/out).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 2
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
# The tests compile every kernel twice (bf16 and fp32 intermediates, ~24 compiles); later steps hit that cache.
timeout 75 python3 -P -m pytest -p no:cacheprovider --import-mode=importlib -q -s -m gpu \
  tests/kernels/test_kda_triton.py 2>&1 | tail -30 | tee "$OUT/kda_gpu_tests.log"
# Launch variants of mixlab's kernels at T=8k (what to tune next), while the budget lasts.
timeout ${SWEEP_S:-150} python3 -P bench/bench_kda_gpu.py --sweep-T 8192 --reps 5 --profile --budget $(( ${SWEEP_S:-150} - 30 )) \
  --out "$OUT/kda_sweep.json" 2>&1 | grep "^sweep" | cut -c1-400 | tee "$OUT/kda_sweep.log"
# fla compiles ~200 s on a cold Triton cache (the lead carries the cache); one autotune config per kernel.
timeout ${ISSUE_S:-110} python3 -P bench/bench_kda_gpu.py --issue --Ts 2048 8192 32768 --fla-configs 1 --reps 5 --profile \
  --budget $(( ${ISSUE_S:-110} - 30 )) --out "$OUT/kda_issue.json" 2>&1 | grep -v "^ \|^{\|^}" | tee "$OUT/kda_issue.log"
echo "--- summary (fla/mixlab > 1: mixlab faster)"
python3 - "$OUT/kda_issue.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no results: {e}")
print(r["device"])
for shape, row in r["shapes"].items():
    m, f = row.get("mixlab_triton", {}), row.get("fla", {})
    print(shape, "mixlab fwd/fwd+bwd ms", m.get("fwd_ms"), m.get("fwd_bwd_ms"), "| fla", f.get("fwd_ms"),
          f.get("fwd_bwd_ms"), "| fla/mixlab fwd+bwd", row.get("fla_over_mixlab_fwd_bwd"))
    for key in ("rel_err_vs_torch_chunk_c64", "rel_err_fla_vs_torch_chunk_c64", "rel_err_vs_fla"):
        if key in row:
            print("  ", key, {n: f"{v:.2e}" for n, v in row[key].items()})
EOF
ls "$OUT"
