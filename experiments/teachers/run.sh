#!/usr/bin/env bash
# Compact teacher cache (teacher.cache_format=compact) against today's fp16 one on the quickstart:
# the same teacher, data, student initialisation, seed and steps; only the cache format changes.
# Usage: bash experiments/teachers/run.sh [OUT]   (then: python experiments/teachers/summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/exp_teachers}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
for fmt in fp16 compact; do  # the quickstart teacher is cached from earlier runs
    /usr/bin/time -f "WALL %e s" distill-cache teacher=cache teacher.cache_format=$fmt \
        teacher.cache_dir="$OUT/cache_$fmt" hydra.run.dir="$OUT/cache_${fmt}_job" 2>&1 | tail -3
done
for fmt in fp16 compact; do
    /usr/bin/time -f "WALL %e s" distill-train teacher=cache teacher.cache_dir="$OUT/cache_$fmt" control=false \
        hydra.run.dir="$OUT/train_$fmt" 2>&1 | tail -2
done
python benchmarks/cache_format.py
