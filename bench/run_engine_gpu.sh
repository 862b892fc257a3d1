#!/usr/bin/env bash
# One device call (<= 200 s, run by bench/run_gpu_wave.sh after its pip install): the engine on the GPU with its
# defaults. Engine GPU tests (fused decode kernels vs references at 1b-a150m shapes; graphs = eager; fp32 graphs =
# recomputation, default and all-fused; no kernel fell back), batch-64 bf16 engine (default = fused decode kernels,
# and MIXLAB_FUSED_DECODE=0 references) vs generate, after the 1k/32k context scan at 1 and 4 rows (default path).
# ENGINE_STEP_COMPARE=1 adds one decode step fused vs references (time, kernels a step, top kernels).
# JSON and logs -> $OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
save() { cp bench/results/generation-cuda-*.json "$OUT"/ 2>/dev/null; true; }
PY="python3 -P"
# fla-core's first compile at new shapes takes minutes (call1: 199 s for chunk_kda): unless ENGINE_FLA=1, hide it so
# that every step here (both peers' prefill, the decode references) runs mixlab's own kernels and torch ops, as the
# previous engine measurement did. The engine's decode kernels never use fla.
if [ "${ENGINE_FLA:-0}" != 1 ]; then
  mkdir -p /tmp/nofla/fla && echo 'raise ImportError("fla-core hidden by bench/run_engine_gpu.sh")' > /tmp/nofla/fla/__init__.py
  export PYTHONPATH="/tmp/nofla${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -P -c "from mixlab.kernels import fla_available; print('fla available:', fla_available())"
N=0
step() {  # full log of each step in $OUT/stepN.log, its tail on the console
  local t=$1; shift; N=$((N + 1)); echo "=== $* ($(date +%T), limit ${t} s)"
  timeout -k 3 "$t" "$@" > "$OUT/step$N.log" 2>&1; local rc=$?
  grep -v -i "warn" "$OUT/step$N.log" | tail -${TAIL:-25}; echo "rc=$rc"; save
}
# The context scan first (ENGINE_CTX=0 skips it): a call cut at its limit keeps the engine's hardest target.
if [ "${ENGINE_CTX:-1}" = 1 ]; then
  step 45 $PY bench/bench_generation.py --preset 1b-a150m --device cuda --methods "" \
    --context-scan 1024,32768 --scan-rows 1,4 --scan-steps 16 --tag ctx
fi
if [ "${ENGINE_TESTS:-1}" = 1 ]; then  # ENGINE_TESTS=0: skip the GPU tests
  step 55 python3 -m pytest -p no:cacheprovider --import-mode=importlib -q -rfE -m gpu tests/evals_engine
fi
if [ "${ENGINE_STEP_COMPARE:-0}" = 1 ]; then
  step 45 $PY bench/bench_generation.py --preset 1b-a150m --device cuda --methods "" --step-compare 64,256 \
    --scan-steps 12 --tag step
fi
if [ "${ENGINE_E2E:-1}" = 1 ]; then  # ENGINE_E2E=0: skip the end-to-end comparison with generate
  step 55 $PY bench/bench_generation.py --preset 1b-a150m --device cuda --prompts 64 --batch 64 --max-new-tokens 128 \
    --repeats 2 --methods engine,engine-reference,hf
fi
grep -h -o '"ratio_last_vs_first": [0-9.]*\|"speedup[a-z_]*": [0-9.]*\|"ratio_vs_hf": {[^}]*' "$OUT"/generation-cuda-*.json 2>/dev/null
ls "$OUT"
