#!/usr/bin/env bash
# Loss study on the quickstart (same teacher, student init, data and 400 steps for every row).
# Usage: bash experiments/losses/run.sh [OUT]   (then: python experiments/losses/summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/exp_losses}
export HF_HUB_OFFLINE=1 DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
# The offline top-64 cache of the quickstart teacher (the teacher itself is cached from earlier runs).
/usr/bin/time -f "WALL %e s" distill-cache teacher=cache teacher.cache_dir="$OUT/teacher_cache" \
    hydra.run.dir="$OUT/cache_job" 2>&1 | tail -3
for loss in forward_kl reverse_kl jsd tvd gkd hidden; do
    /usr/bin/time -f "WALL %e s" distill-train loss=$loss control=false hydra.run.dir="$OUT/$loss" 2>&1 | tail -2
done
/usr/bin/time -f "WALL %e s" distill-train teacher=cache teacher.cache_dir="$OUT/teacher_cache" control=false \
    hydra.run.dir="$OUT/cache_top64" 2>&1 | tail -2
