#!/usr/bin/env bash
# Issue 11, training step, one device call (<= 240 s): GPU tests of the recipe's CUDA-graph step, the 1b-a150m step
# at 8k and 16k tokens (peer vs fast vs fast_graph vs recipe_graph), and 200-step loss agreement on learnable data.
# fla's autotune is capped at 1 config per kernel (uncapped it takes ~170 s at this shape). Writes to $OUT.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONSAFEPATH=1
PY="python3 -P"
t0=$(date +%s)

# The GPU tests use the torch KDA reference: they check the graph plumbing, not fla (the bench below runs fla).
MIXLAB_KDA_BACKEND=torch timeout 60 $PY -m pytest -p no:cacheprovider --import-mode=importlib -q -m gpu \
    tests/recipes/test_graph_step_gpu.py > "$OUT/step_gpu_tests.log" 2>&1
echo "gpu tests rc=$? ($(( $(date +%s) - t0 )) s)"; tail -n 5 "$OUT/step_gpu_tests.log"

timeout 95 $PY bench/bench_step.py --tokens 8192,16384 --modes peer,fast,fast_graph,recipe_graph --iters 10 \
    --fla-configs 1 --out "$OUT/step.json" > "$OUT/step.log" 2>&1
echo "bench_step rc=$? ($(( $(date +%s) - t0 )) s)"; tail -n 12 "$OUT/step.log"

timeout 80 $PY bench/bench_loss_agreement.py --steps 200 --fla-configs 1 --out "$OUT/loss_agreement.json" \
    > "$OUT/loss_agreement.log" 2>&1
echo "loss agreement rc=$? ($(( $(date +%s) - t0 )) s)"; tail -n 3 "$OUT/loss_agreement.log"
