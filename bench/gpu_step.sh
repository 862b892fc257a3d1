#!/usr/bin/env bash
# Issue 11, training step, one device call (<= STEP_BUDGET_S, default 300 s, in all): GPU tests of the recipe's
# CUDA-graph step, the 1b-a150m step (peer vs fast vs fast_graph (+ its MoE on the grouped path) vs recipe_graph),
# 200-step loss agreement on learnable data, then, if time is left, a step run without fla. STEP_BENCH=0 skips the
# step comparison.
# fla's first use compiles for minutes (199 s in call 1 even with one autotune config) unless TRITON_CACHE_DIR already
# holds its kernels (run_gpu_wave.sh unpacks a carried .tcpack/); the GPU tests use mixlab's own Triton KDA (the torch
# KDA reference cannot be captured: it reads a chunk count on the host). Every step gets what is left of the budget.
# Writes to $OUT.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONSAFEPATH=1
PY="python3 -P"
BUDGET=${STEP_BUDGET_S:-300}
t0=$(date +%s)
# min(cap, time left), at least 1 (timeout 0 would mean no limit)
left() { local l=$(( BUDGET - ($(date +%s) - t0) )); [ "$l" -lt 1 ] && l=1; [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

# GPU tests on mixlab's Triton KDA (the default since wave 12): they check the graph plumbing, not fla.
if [ "${STEP_TESTS:-1}" = 1 ]; then  # STEP_TESTS=0 skips them
  MIXLAB_KDA_BACKEND=triton timeout "$(left 60)" $PY -m pytest -p no:cacheprovider --import-mode=importlib -q -m gpu \
      tests/kernels/test_step_graph.py tests/recipes/test_graph_step_gpu.py > "$OUT/step_gpu_tests.log" 2>&1
  say "gpu tests rc=$?"; grep -E "^E  |passed|failed" "$OUT/step_gpu_tests.log" | cut -c1-600 | tail -n 12
fi

# The issue's comparison: the off-the-shelf peer (fla KDA + grouped_mm + SDPA) against mixlab's paths.
# STEP_MODES: the modes to time (bench_step.py's list; "_mixkda" runs a mode on mixlab's Triton KDA); STEP_BENCH_S:
# its time cap; STEP_TOKENS: the batch sizes; STEP_ARGS: more bench_step.py flags (e.g. --host-profile).
if [ "${STEP_BENCH:-1}" = 1 ]; then
  timeout "$(left "${STEP_BENCH_S:-150}")" $PY bench/bench_step.py --tokens "${STEP_TOKENS:-8192,16384}" \
    --modes "${STEP_MODES:-peer,fast,fast_graph,fast_graph_grouped,recipe_graph}" --iters 10 --fla-configs 1 \
    ${STEP_ARGS:-} \
    --out "$OUT/step.json" > "$OUT/step.log" 2>&1
  say "bench_step rc=$?"; tail -n "${STEP_TAIL:-10}" "$OUT/step.log"
fi

# STEP_LOSS=0 skips this. LOSS_ARGS: extra runs (default --recipe; "--recipe --fp32-reference" adds the bf16 noise
# floor after it; "--reuse FILE" takes the first two curves from an earlier result).
if [ "${STEP_LOSS:-1}" = 1 ]; then
  timeout "$(left 400)" $PY bench/bench_loss_agreement.py --steps 200 --fla-configs 1 ${LOSS_ARGS:---recipe} \
      --out "$OUT/loss_agreement.json" > "$OUT/loss_agreement.log" 2>&1
  say "loss agreement rc=$?"; grep -v -i warn "$OUT/loss_agreement.log" | tail -n 3
fi

# Quick, if time is left (STEP_NOFLA=0 skips it): no fla at all; the graph modes against the eager fast path,
# mixlab's Triton KDA throughout.
[ "${STEP_NOFLA:-1}" = 1 ] || exit 0
MIXLAB_KDA_BACKEND=triton timeout "$(left 40)" $PY bench/bench_step.py --no-fla --tokens 8192 --modes fast,fast_graph,recipe_eager,recipe_graph \
    --iters 5 --out "$OUT/step_nofla.json" > "$OUT/step_nofla.log" 2>&1
say "bench_step --no-fla rc=$?"; tail -n 6 "$OUT/step_nofla.log"
