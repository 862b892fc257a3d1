#!/usr/bin/env bash
# Issue 11, one device call: is the recipe graph step's loss curve reproducible, and does it depend on the MoE path?
# Each LOSS_VARIANTS item IMPL:RUNS trains the recipe path RUNS times with MIXLAB_MOE_IMPL=IMPL against the reference
# and fast curves of LOSS_REUSE (same data, init and settings); every run records its gradient norms and rechecks any
# loss spike (bench_loss_agreement.py's train_recipe). Results -> $OUT/loss_IMPL.json.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONSAFEPATH=1
REUSE=${LOSS_REUSE:-bench/results/loss_agreement_h100_s9i.json}
for variant in ${LOSS_VARIANTS:-auto:3 grouped:2}; do
  impl=${variant%%:*}; runs=${variant##*:}
  MIXLAB_MOE_IMPL=$impl python3 -P bench/bench_loss_agreement.py --steps 200 --fla-configs 1 --reuse "$REUSE" \
    --recipe --recipe-runs "$runs" --out "$OUT/loss_$impl.json" > "$OUT/loss_$impl.log" 2>&1
  echo "$impl rc=$?"; grep -v -i warn "$OUT/loss_$impl.log" | grep -v "^  " | tail -n $((runs + 3)) | cut -c1-700
done
