#!/usr/bin/env bash
# The sampled cache against top-k at equal bytes per token (96: top-24 fp16 or 32 draws), full size: the
# whole quickstart training split in both caches, the quickstart's 400 steps, several seeds (SEEDS: each
# seed splits the data and orders the batches anew, so each seed writes its own two caches; the teacher is
# the same), the validation perplexity and ECE on VAL blocks of 256 tokens. sampled_run.sh is the reduced
# version.
# Runs one after another (2 cores); a finished training is skipped, a cache resumes where it stopped.
# Usage: bash experiments/teachers/sampled_full.sh [OUT]   (then: python experiments/teachers/sampled_full_summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/sampled_full}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
# TEACHER: the quickstart teacher's dir (8 x 256, vocab 4,096): the "teacher:" line of a quickstart run's train.log
# (its hash depends on the precision it was trained in: bf16-mixed where the CPU has bf16, else fp32)
TEACHER=${TEACHER:?set TEACHER=<the quickstart teacher dir>}
STEPS=${STEPS:-400} K=${K:-24} N=${N:-32} VAL=${VAL:-256} SEEDS=${SEEDS:-0 1 2}
COMMON=(teacher.path="$TEACHER" data.max_val_blocks="$VAL")
mkdir -p "$OUT"
declare -A MODE=([topk]="teacher.top_k=$K" [sampled]="teacher.cache_mode=sample teacher.samples=$N")
for seed in $SEEDS; do  # seed (and data.seed, which follows it): the train/validation split and the batch order
    for arm in topk sampled; do
        # shellcheck disable=SC2086  # MODE holds two overrides
        /usr/bin/time -f "WALL %e s" nice -n 10 distill-cache teacher=cache "${COMMON[@]}" ${MODE[$arm]} seed="$seed" \
            teacher.cache_dir="$OUT/cache_${arm}_s$seed" hydra.run.dir="$OUT/cache_${arm}_s${seed}_job" \
            >"$OUT/cache_${arm}_s$seed.log" 2>&1
    done
    for arm in topk sampled; do
        run="$OUT/train_${arm}_s$seed"
        [ -f "$run/metrics.json" ] && continue
        /usr/bin/time -f "WALL %e s" nice -n 10 distill-train teacher=cache "${COMMON[@]}" seed="$seed" \
            teacher.cache_dir="$OUT/cache_${arm}_s$seed" control=false trainer.max_steps="$STEPS" \
            hydra.run.dir="$run" >"$run.log" 2>&1
    done
done
