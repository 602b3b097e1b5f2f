#!/usr/bin/env bash
# Q4_0: QAT against PTQ over more seeds than run_full.sh's one. For each seed: the quickstart student trained
# 400 steps in full precision (fp_s<S>: exported F16 and, as PTQ, Q4_0) and the same 400 steps with
# quant=qat_q4_0 from the same pruned init (qat_q4_0_s<S>), then measure.py on that seed's validation split.
# seed=S moves data.seed (the train/validation split and the batch order); the teacher is the same quickstart
# teacher in every seed (TEACHER: its dir, the "teacher:" line of a quickstart run's train.log).
# FROM=N: also QAT as the last phase of the same 400 steps (quant.start_step=N: full precision before step N,
# so the run is fp_s<S>'s own run until then; qat_q4_0_from<N>_s<S>, measured into results_from<N>_s<S>.json).
# Usage: TEACHER=<dir> SEEDS="1 2" [FROM=300] bash experiments/deploy/seeds.sh [OUT]   Needs llama-cpp-python.
set -euo pipefail
OUT=${1:-/tmp/deploy_seeds}
TEACHER=${TEACHER:?set TEACHER=<the quickstart teacher dir>}
SEEDS=${SEEDS:-1 2}
FROM=${FROM:-}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
source "$(dirname "$0")/train.sh"  # train NAME OVERRIDES...
for s in $SEEDS; do
    train "fp_s$s" seed="$s"
    train "qat_q4_0_s$s" seed="$s" quant=qat_q4_0
    for t in f16 q4_0; do [ -f "$OUT/fp_s$s/student.$t.gguf" ] || distill-export run_dir="$OUT/fp_s$s" export.gguf=$t; done
    [ -f "$OUT/results_s$s.json" ] || python experiments/deploy/measure.py "$OUT/fp_s$s" "$OUT/qat_q4_0_s$s" --seed "$s" \
        --override teacher.path="$TEACHER" --out "$OUT/results_s$s.json"   # the runs' tokenizer is the teacher's
    if [ -n "$FROM" ]; then
        train "qat_q4_0_from${FROM}_s$s" seed="$s" quant=qat_q4_0 quant.start_step="$FROM"
        [ -f "$OUT/results_from${FROM}_s$s.json" ] || python experiments/deploy/measure.py \
            "$OUT/qat_q4_0_from${FROM}_s$s" --seed "$s" --override teacher.path="$TEACHER" --out "$OUT/results_from${FROM}_s$s.json"
    fi
done
