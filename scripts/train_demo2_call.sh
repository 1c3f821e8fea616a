#!/usr/bin/env bash
# One device call of issue 18's demo2 training, on a machine that may or may not have the run already.
#
#   CALL_MINUTES=9 TOTAL_MINUTES=19 OUT=/some/dir bash scripts/train_demo2_call.sh [eval]
#
# - No runs/demo2 yet: trains the VAE (VAE_MINUTES, default 3; it starts as a block-average codec) into
#   runs/demo2-vae and checks its round trip of the generator's clips (prompt_following --round-trip-only, into $OUT/vae); then starts the
#   transformer from it, unless NO_TRANSFORMER=1 (a VAE-only call, to look at the round trip first).
# - Otherwise the transformer goes on (--resume): exactly where the machine kept
#   runs/demo2/training_state.pt, from the pipeline's weights where only the folder came back.
# - The transformer trains until CALL_MINUTES after this script started, less a minute for saving,
#   within a run budget of TOTAL_MINUTES (fixed at the run's start: it sets the cosine schedule).
# - The pipeline folder and its progress come back in $OUT as demo2.tar.* pieces of 15 MB
#   (`cat demo2.tar.* | tar xf - -C runs`), with the training log.
# - `eval` (once the run has finished): the prompt-following check and the contact sheet at the
#   training resolution (512) and at the CPU demo's (256), into $OUT/eval.
set -euo pipefail
: "${OUT:?set OUT to the folder to return}" "${CALL_MINUTES:?}" "${TOTAL_MINUTES:?}"
VAE_MINUTES=${VAE_MINUTES:-3}
RUNS=${RUNS:-runs}
TRAIN="python3 scripts/train_demo_model.py --size demo2 --data scenes ${TRAIN_ARGS:-}"  # TRAIN_ARGS: e.g. --compile
mkdir -p "$RUNS" "$OUT"
exec > >(tee -a "$OUT/train.log") 2>&1
if [ ! -f "$RUNS/demo2/training_progress.json" ]; then
    $TRAIN --stage vae --minutes "$VAE_MINUTES" --out "$RUNS/demo2-vae" --resume
    python3 scripts/prompt_following.py --model "demo2 VAE=$RUNS/demo2-vae" --round-trip-only --out "$OUT/vae" \
        --height 512 --width 512 --device cuda | grep "round trip |"
    tar cf - -C "$RUNS" --exclude training_state.pt demo2-vae | split -b 15M - "$OUT/demo2-vae.tar."
    if [ "${NO_TRANSFORMER:-0}" = 1 ]; then exit 0; fi
fi
left=$(python3 -c "print(max(0.5, $CALL_MINUTES - $SECONDS / 60 - 1.0))")
$TRAIN --stage transformer --init "$RUNS/demo2-vae" --minutes "$TOTAL_MINUTES" --call-minutes "$left" \
    --out "$RUNS/demo2" --resume
tar cf - -C "$RUNS" --exclude training_state.pt demo2 | split -b 15M - "$OUT/demo2.tar."
if [ "${1:-}" = eval ]; then
    for res in 512 256; do
        python3 scripts/prompt_following.py --model "demo2=$RUNS/demo2" --out "$OUT/eval/$res" --seeds 0,1 \
            --height $res --width $res --device cuda
        python3 scripts/demo_contact_sheet.py --model "$RUNS/demo2" --out "$OUT/eval/$res/contact_sheet.png" \
            --resolution $res --device cuda
    done
fi
