#!/usr/bin/env bash
# Issue 21 in one GPU call: the step-cache quality study with FirstBlockCache alone, at each setting
# of SETTINGS ("threshold:warmup" pairs, warmup 1 adds --cache-in-warmup), 8 prompts x 6 seeds each,
# packed with their schedules and compare reports (no videos) into $OUT/step_cache_studies.tar.
#
#   OUT=/some/dir bash scripts/step_cache_studies_call.sh
#   SETTINGS="0.3:1" STUDY_ARGS="--seeds 0 --prompts 1 ..." OUT=... bash scripts/step_cache_studies_call.sh   # fewer
#
# Then, on any machine, compose each setting's 50-step totals from the H200 step times:
#   python scripts/bench_step_cache.py --models wan1.3b-480,wan14b-720,hunyuan-720 --caches first-block \
#       --timings docs/results/step_cache_h200.json --schedules DIR/step_cache_schedules.json \
#       --quality DIR/quality_step_cache.json [--cache-in-warmup] --out DIR
set -euo pipefail
: "${OUT:?set OUT to the folder to return}"
SETTINGS=${SETTINGS:-"0.2:1 0.3:0 0.3:1"}
STUDY_ARGS=${STUDY_ARGS:-"--seeds 0,1,2,3,4,5 --workers 6 --device cuda"}
WORK=$(mktemp -d)
mkdir -p "$OUT"
for setting in $SETTINGS; do
    threshold=${setting%%:*}
    warmup=()
    name=fbc$threshold
    if [ "${setting##*:}" = 1 ]; then warmup=(--cache-in-warmup); name=${name}_warmup; fi
    echo "== FirstBlockCache $threshold ${warmup[*]}"
    # shellcheck disable=SC2086
    python3 scripts/quality_step_cache.py --out "$WORK/$name" --caches first-block --first-block-threshold "$threshold" \
        "${warmup[@]}" $STUDY_ARGS > "$WORK/$name.log" 2>&1 || { tail -20 "$WORK/$name.log"; exit 1; }
    grep "first-block |" "$WORK/$name/quality_step_cache.md" | head -6
    mkdir -p "$WORK/pack/$name"
    cp "$WORK/$name"/quality_step_cache.{json,md} "$WORK/$name/step_cache_schedules.json" \
        "$WORK/$name/quality_step_cache_runs/report.json" "$WORK/$name.log" "$WORK/pack/$name/"
done
tar cf "$OUT/step_cache_studies.tar" -C "$WORK/pack" .
