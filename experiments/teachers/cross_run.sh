#!/usr/bin/env bash
# Two teachers of different tokenizers vs the first alone, on the quickstart (embedded default), at equal
# steps (400), seed and data; the student is pruned from teacher A (every other layer) and keeps A's tokenizer.
#   A: the quickstart's teacher (8 layers, byte-level BPE 4,096, 600 steps from scratch; cached)
#   C: the same recipe on a byte-level BPE of 8,192 (data.vocab_size=8192; trained by the first command)
# With both, A is compared by forward KL on the student's own rows and C by GOLD on its own tokens of
# the same text, aligned with the student's (teachers_mix=sum: distill/run/cross_teachers.py).
# Runs one after another (2 CPU cores); a run whose metrics.json exists is skipped.
# Usage: bash experiments/teachers/cross_run.sh [OUT]   (then: python experiments/teachers/cross_summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/cross_teachers}
STEPS=${STEPS:-400}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
source "$(dirname "$0")/run_lib.sh"   # run <name> <overrides...>
run teacherC_prep data.vocab_size=8192 trainer.max_steps=1   # trains and caches teacher C only
C=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['teacher.path'])" "$OUT/teacherC_prep/metrics.json")
BOTH=(teachers_mix=sum loss=gold loss.weights.forward_kl=1.0)
run single_A trainer.max_steps=$STEPS                                                                # KD from A alone
run mix_A_C trainer.max_steps=$STEPS "teachers=[{weight: 0.5}, {path: $C, weight: 0.5, name: C}]" "${BOTH[@]}"
run single_C trainer.max_steps=$STEPS "teachers=[{weight: 0}, {path: $C, weight: 1, name: C}]" "${BOTH[@]}"  # C alone
