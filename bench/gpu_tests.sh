#!/usr/bin/env bash
# One device call (<= GPU_TESTS_S, default 150 s): the training-path GPU tests: the fast path against the references
# (joint projections, the model step, the MoE at Kimi shapes), the recipes' CUDA-graph step, then mixlab's fused short
# conv and Triton KDA on CUDA. KDA on mixlab's Triton kernels (MIXLAB_KDA_BACKEND=triton): fla-core would autotune
# for minutes at the small test shapes; the peer runs fla. GPU_TESTS_K: a -k selection for the first group. Results ->
# $OUT/gpu_tests*.log.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONSAFEPATH=1 MIXLAB_KDA_BACKEND=triton
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s); BUDGET=${GPU_TESTS_S:-150}
left() { local l=$(( BUDGET - ($(date +%s) - t0) )); [ "$l" -lt 1 ] && l=1; echo "$l"; }
PYTEST="python3 -m pytest -p no:cacheprovider --import-mode=importlib -q -rf"
timeout "$(left)" $PYTEST -m "not slow" ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} tests/kernels/test_fast_path_gpu.py \
  tests/kernels/test_step_graph.py tests/recipes/test_graph_step_gpu.py tests/kernels/test_moe_gpu.py \
  tests/model/test_gpu.py > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; grep -E "^E  |passed|failed|FAILED|error" "$OUT/gpu_tests.log" | cut -c1-400 | tail -n 20
timeout "$(left)" $PYTEST -k conv tests/kernels/test_fused_triton.py > "$OUT/gpu_tests_conv.log" 2>&1
echo "conv tests on CUDA rc=$?"
grep -E "^E  |passed|failed|FAILED|error" "$OUT/gpu_tests_conv.log" | cut -c1-400 | tail -n 8
# mixlab's Triton KDA at Kimi shapes against the torch reference (also in gpu_kda.sh, which pairs it with the bench).
timeout "$(left)" $PYTEST -m gpu tests/kernels/test_kda_triton.py > "$OUT/gpu_tests_kda.log" 2>&1
echo "KDA tests on CUDA rc=$?"
grep -E "^E  |passed|failed|FAILED|error" "$OUT/gpu_tests_kda.log" | cut -c1-400 | tail -n 8
# The model's packing test failing: where packed and unpacked logits part, per component and per layer.
if grep -q "FAILED.*packing" "$OUT/gpu_tests.log"; then
  timeout "$(left)" python3 -P bench/diag_packing_gpu.py > "$OUT/diag_packing.log" 2>&1
  echo "packing diagnosis rc=$?"; grep -v -i warn "$OUT/diag_packing.log" | cut -c1-300 | tail -n 40
fi
