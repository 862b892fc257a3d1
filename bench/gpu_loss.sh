#!/usr/bin/env bash
# Issue 11, one device call: is the recipe graph step's loss curve reproducible, and does it depend on the MoE path?
# Each LOSS_VARIANTS item IMPL:RUNS[:nosync] trains the recipe path RUNS times with MIXLAB_MOE_IMPL=IMPL against the
# reference and fast curves of LOSS_REUSE (same data, init and settings); every run records its gradient norms and
# rechecks any loss spike (bench_loss_agreement.py's train_recipe), or with :nosync reads nothing on the host until
# the end, as the wave-9 run that spiked did. Results -> $OUT/loss_IMPL[_nosync].json.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONSAFEPATH=1
REUSE=${LOSS_REUSE:-bench/results/loss_agreement_h100_s9i.json}
for variant in ${LOSS_VARIANTS:-auto:2:nosync auto:2 grouped:1}; do
  IFS=: read -r impl runs sync <<< "$variant"
  name=$impl${sync:+_$sync}; extra=""; [ "$sync" = nosync ] && extra=--no-spike-recheck
  # LOSS_RUN_S caps each variant; at the cap SIGABRT makes faulthandler print where every thread was (s11b's run
  # was cut at its call's limit before its first step, with no output).
  # KDA: the default ("auto": mixlab's since wave 12); MIXLAB_KDA_BACKEND=fla for fla-core's, the configuration
  # of the s9i spike. On a cold Triton cache fla's first compile counts too (170-225 s in waves 5-11, over 390 s in
  # s12a): run_gpu_wave.sh's warm item first, and give it the whole call.
  MIXLAB_MOE_IMPL=$impl timeout -s ABRT "${LOSS_RUN_S:-400}" python3 -X faulthandler -P bench/bench_loss_agreement.py \
    --steps 200 --fla-configs 1 --reuse "$REUSE" --recipe --recipe-runs "$runs" $extra --out "$OUT/loss_$name.json" \
    > "$OUT/loss_$name.log" 2>&1
  echo "$name rc=$?"; grep -v -i warn "$OUT/loss_$name.log" | grep -v "^  " | tail -n $((runs + 4)) | cut -c1-700
  grep -q "^Fatal Python error" "$OUT/loss_$name.log" && grep -A 25 "most recent call first" "$OUT/loss_$name.log" \
    | head -n 40
done
