#!/usr/bin/env bash
# The lead's one device call: runs each area's GPU script (tests + benchmarks) under its own time limit and brings
# everything back as two archives (the device returns at most 8 files). Triton's compile cache lives in .tritoncache,
# carried between calls (or packed in .tcpack/), so fla-core's ~200 s first compile is not paid every call.
#   usage on the device: OUT=... [WARM_S=60] bash bench/run_gpu_wave.sh "engine:200 warm:60 step:220 moe:80 kda:150"
#   (items: kda, step, moe, conv, loss, tests, engine, warm; each NAME:SECONDS)
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MIXLAB_DATA= TOKENIZERS_PARALLELISM=false
export TRITON_CACHE_DIR="$PWD/.tritoncache"; mkdir -p "$TRITON_CACHE_DIR"
# A cache brought back by an earlier call (its tritoncache.tgz.part-* files, saved here under the ignored .tcpack/ and
# carried; 53 MB after wave 5: fla's H=32 KDA and 1b-a150m kernels + mixlab's) is unpacked first: it survives between
# sessions.
if ls .tcpack/tritoncache.tgz.part-* >/dev/null 2>&1; then cat .tcpack/tritoncache.tgz.part-* | tar xzf - && echo "cache unpacked"; fi
FINAL_OUT=${OUT:-/tmp/out}; WORK=/tmp/wave; rm -rf "$WORK"; mkdir -p "$WORK" "$FINAL_OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
# Neither fla-core nor trl is on the device image: carry their wheels in .whl/, fetched here once per checkout with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl fla-core==0.6.0 \
#     einops trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# (trl and the last three, which the image also lacks, for the real-SFTTrainer GPU test: it skips without them, as
# in s11a-s12b, and ran in s13a).
# Without fla every "peer" silently runs the torch KDA (wave 10's s10a did), so say so loudly.
python3 -c "import fla; print('fla', fla.__version__)" 2>/dev/null \
  || echo "WARNING: fla-core missing (no .whl carried): the peer and 'auto' modes will not run fla's KDA"
# Item warm:N (or WARM_S=N, before every item): compile fla's kernels into the cache first (bench/fla_warm.py), for at
# most N s. In the foreground: run in the background (wave 5) its GPU work and compiles overlapped the engine's
# timings and made them unusable. The engine hides fla, so "engine:200 warm:60 step:220" times the engine first.
warm() {
  timeout -k 5 "$1" python3 -P bench/fla_warm.py > "$WORK/flawarm.log" 2>&1
  echo "=== fla warm rc=$?"; grep -v -i warn "$WORK/flawarm.log" | tail -5
}
if [ -n "${WARM_S:-}" ]; then warm "$WARM_S"; fi
declare -A SCRIPT=([kda]=bench/gpu_kda.sh [step]=bench/gpu_step.sh [moe]=bench/gpu_moe.sh [engine]=bench/run_engine_gpu.sh
                   [conv]=bench/gpu_conv.sh [loss]=bench/gpu_loss.sh
                   [tests]=bench/gpu_tests.sh)
for item in ${1:-kda:150 step:150 moe:80 engine:170}; do
  name=${item%%:*}; secs=${item##*:}
  if [ "$name" = warm ]; then warm "$secs"; continue; fi
  script=${SCRIPT[$name]}
  mkdir -p "$WORK/$name"
  echo "=== $name ($script, ${secs} s) $(date +%T)"
  if [ -f "$script" ]; then
    OUT="$WORK/$name" timeout -k 5 "$secs" bash "$script" > "$WORK/$name/console.log" 2>&1
    echo "rc=$?"; grep -v -i warn "$WORK/$name/console.log" | tail -${TAIL:-30}
  else
    echo "missing $script"
  fi
  tar czf "$FINAL_OUT/results.tgz" -C "$WORK" .  # after each item: a call cut at its limit still returns the rest
done
if [ "${KEEP_CACHE:-1}" = 1 ]; then  # KEEP_CACHE=0: no cache back (the device returns at most 8 files)
  tar czf /tmp/tc.tgz .tritoncache && split -b 15m /tmp/tc.tgz "$FINAL_OUT/tritoncache.tgz.part-"
fi
ls -la "$FINAL_OUT"; du -sh .tritoncache
