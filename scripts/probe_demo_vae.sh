#!/usr/bin/env bash
# Issue 18: which VAE recipe learns demo2's scenes fastest? Trains the VAE of --size demo2 on scenes
# with each recipe below side by side on one GPU for MINUTES each, then checks each VAE's round trip
# of the generator's clips with the prompt-following check (its ceiling as a demo model).
#
#   MINUTES=2.5 OUT=/some/dir bash scripts/probe_demo_vae.sh
#
# Each run's log (the reconstruction PSNR of 33-frame 512x512 clips is its last lines) and
# round-trip table land in $OUT/<recipe>/.
set -euo pipefail
: "${OUT:?set OUT}" "${MINUTES:?}"
declare -A RECIPES=(
    [kl1e-4_lr3e-4]="--kl-weight 1e-4 --lr 3e-4"
    [kl1e-4_lr1e-3]="--kl-weight 1e-4 --lr 1e-3"
    [kl1e-6_lr3e-4]="--kl-weight 1e-6 --lr 3e-4"
    [kl1e-6_lr1e-3]="--kl-weight 1e-6 --lr 1e-3"
)
for name in "${!RECIPES[@]}"; do
    mkdir -p "$OUT/$name"
    python3 scripts/train_demo_model.py --size demo2 --data scenes --stage vae --minutes "$MINUTES" --warmup 50 \
        --vae-frames 17 --stats-clips 16 ${RECIPES[$name]} --out "runs/probe/$name" > "$OUT/$name/train.log" 2>&1 &
done
wait
for name in "${!RECIPES[@]}"; do
    python3 scripts/prompt_following.py --model "$name=runs/probe/$name" --round-trip-only --out "$OUT/$name" \
        --height 512 --width 512 --device cuda > /dev/null 2>&1
    echo "$name: $(grep -h 'step .* psnr' "$OUT/$name/train.log" | tail -1)"
    echo "   $(grep -h 'reconstruction' "$OUT/$name/train.log")"
    echo "   $(grep -h 'VAE round trip |' "$OUT/$name/prompt_following.md" | head -1)"
done
