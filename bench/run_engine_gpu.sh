#!/usr/bin/env bash
# One device call: engine GPU tests + generation/serve benchmarks on 1b-a150m. Results -> $OUT (and bench/results).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
save() { cp bench/results/generation-cuda-*.json bench/results/serve-cuda.json "$OUT"/ 2>/dev/null; true; }
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install failed"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
PY="python3 -P"
step() { local t=$1; shift; echo "=== $*"; timeout "$t" "$@" 2>&1 | grep -v -i "warn" | tail -${TAIL:-25}; save; }
step 80 python3 -m pytest -p no:cacheprovider --import-mode=importlib -q -m gpu tests/evals_engine -x
step 130 $PY bench/bench_generation.py --preset 1b-a150m --device cuda --prompts 64 --batch 64 --max-new-tokens 128 \
  --repeats 2 --methods engine,hf --agreement --hf-batch-alt 32
step 60 $PY bench/bench_serve.py --preset 1b-a150m --device cuda --requests 64 --sequential-requests 16 \
  --concurrency 64 --max-tokens 128
step 70 $PY bench/bench_generation.py --preset 1b-a150m --device cuda --methods "" --context-scan 1024,32768 \
  --scan-rows 1,4 --scan-steps 32 --tag ctx
step 40 $PY bench/bench_generation.py --preset 1b-a150m --device cuda --dtype float32 --prompts 16 --batch 16 \
  --max-new-tokens 32 --repeats 1 --methods engine,hf
export MIXLAB_ENGINE_MOE=sparse
step 30 $PY bench/bench_generation.py --preset 1b-a150m --device cuda --prompts 64 \
  --batch 64 --max-new-tokens 128 --repeats 2 --methods engine --tag grouped
ls "$OUT"
