#!/usr/bin/env bash
# Sampled teacher cache (teacher.cache_mode=sample) against a top-k cache at equal bytes per token on the
# quickstart: 96 bytes/token = top-24 in the fp16 layout (24 x (2-byte log-prob + 2-byte id)) or 32 draws
# (32 x (1-byte count + 2-byte id)). Same teacher (the quickstart's, by path), data, pruned student, seed
# and steps; only the cache differs. Reduced for this 2-core machine, equally for both arms: the first
# DOCS stdlib files (data.max_docs) and STEPS steps.
# Usage: bash experiments/teachers/sampled_run.sh [OUT]   (then: python experiments/teachers/sampled_summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/sampled_exp}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
TEACHER=${TEACHER:-$DISTILL_CACHE_DIR/teachers/139714577ad63b5f}  # the quickstart teacher (8 x 256, vocab 4,096)
DOCS=${DOCS:-120} STEPS=${STEPS:-100} K=${K:-24} N=${N:-32}
COMMON=(teacher.path="$TEACHER" data.max_docs="$DOCS" data.max_val_blocks=128)
mkdir -p "$OUT"
declare -A MODE=([topk]="teacher.top_k=$K" [sampled]="teacher.cache_mode=sample teacher.samples=$N")
for arm in topk sampled; do  # the two arms side by side (each resumes a cache it finds half written)
    # shellcheck disable=SC2086  # MODE holds two overrides
    /usr/bin/time -f "WALL %e s" distill-cache teacher=cache "${COMMON[@]}" ${MODE[$arm]} \
        teacher.cache_dir="$OUT/cache_$arm" hydra.run.dir="$OUT/cache_${arm}_job" >"$OUT/cache_$arm.log" 2>&1 &
done
wait
for arm in topk sampled; do
    /usr/bin/time -f "WALL %e s" distill-train teacher=cache "${COMMON[@]}" teacher.cache_dir="$OUT/cache_$arm" \
        control=false trainer.max_steps="$STEPS" hydra.run.dir="$OUT/train_$arm" >"$OUT/train_$arm.log" 2>&1 &
done
wait
tail -n 2 "$OUT"/cache_*.log "$OUT"/train_*.log
python experiments/teachers/sampled_agreement.py "$OUT" | tail -n 25  # agreement and KL against the live teacher
