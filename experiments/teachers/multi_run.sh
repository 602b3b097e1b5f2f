#!/usr/bin/env bash
# Two teachers vs the better single teacher on the quickstart (embedded default), at equal steps (400),
# seed (0), data and student: the student is pruned from teacher A (every other layer) in every run.
#   A: the quickstart's teacher (8 layers, 7.5M params, 600 steps from scratch; cached from earlier runs)
#   B: the same recipe at 6 layers (teacher.scratch.num_layers=6; trained by the first command)
# Runs one after another (2 CPU cores); a run whose metrics.json exists is skipped. STEPS (default the
# quickstart's 400) sets the distillation steps of every run alike; the committed numbers are at 400.
# Usage: bash experiments/teachers/multi_run.sh [OUT]   (then: python experiments/teachers/multi_summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/multi_teachers}
STEPS=${STEPS:-400}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
B='{scratch: {num_layers: 6}'
source "$(dirname "$0")/run_lib.sh"   # run <name> <overrides...>
run teacherB_prep teacher.scratch.num_layers=6 trainer.max_steps=1   # trains and caches teacher B only
run single_A trainer.max_steps=$STEPS                                                      # KD from A alone
run mix_A_B trainer.max_steps=$STEPS "teachers=[{weight: 0.5}, $B, weight: 0.5, name: B}]"  # 0.5 A + 0.5 B
run single_B trainer.max_steps=$STEPS "teachers=[{weight: 0}, $B, weight: 1, name: B}]"     # B alone, student cut from A
