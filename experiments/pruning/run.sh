#!/usr/bin/env bash
# Pruning study on the quickstart teacher (8 layers x 256, 7.48M params).
# Usage: bash experiments/pruning/run.sh [OUT] [all|train]   (then: python experiments/pruning/summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/exp_pruning}
export HF_HUB_OFFLINE=1 DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
T=4262144  # the every-other-layer student's parameter count: every structured method is held to it
run() { /usr/bin/time -f "WALL %e s" "$@" 2>&1 | tail -1; }
STAGE=${2:-all}  # all | train (skip the pruning-only runs)
# 1. Right after pruning, no training.
if [ "$STAGE" = all ]; then
run distill-prune student=every_other_layer hydra.run.dir="$OUT/prune/every_other_layer"
run distill-prune student=depth student.target_params=$T hydra.run.dir="$OUT/prune/depth"
run distill-prune student=width student.target_params=$T hydra.run.dir="$OUT/prune/width"
for m in wanda magnitude; do
    run distill-prune student=$m student.sparsity=0.5 hydra.run.dir="$OUT/prune/${m}_50"
    run distill-prune student=$m student.sparsity=2:4 hydra.run.dir="$OUT/prune/${m}_2of4"
done
fi
# 2. After the same distillation budget (400 steps), validated every 10 steps for the token curve;
#    the first run also trains the from-scratch control (same architecture, same steps, CE only).
V="trainer.val_check_interval=10 trainer.limit_val_batches=1.0"  # the whole validation set, as the control's
run distill-train student=every_other_layer $V hydra.run.dir="$OUT/train/every_other_layer"
run distill-train student=depth student.target_params=$T control=false $V hydra.run.dir="$OUT/train/depth"
run distill-train student=width student.target_params=$T control=false $V hydra.run.dir="$OUT/train/width"
# 3. Sparse upcycling: 4 experts copied from the every-other-layer student's MLPs, top-1 routing, so
#    each token uses as many parameters as the dense student (plus the router).
run distill-train student=moe_upcycle student.experts_per_token=1 control=false $V hydra.run.dir="$OUT/train/moe_upcycle_top1"
