#!/usr/bin/env bash
# Deploy study: the quickstart teacher and student as GGUF files in llama.cpp, PTQ vs QAT.
# Usage: bash experiments/deploy/run.sh FP_RUN [OUT]
#   FP_RUN: a finished quickstart run dir (distill-train experiment=quickstart control=false), whose
#   student/ is the full-precision student; OUT: where the QAT fine-tunes and results go.
# Needs llama-cpp-python (pip install -e ".[deploy]").
set -euo pipefail
FP=$1
OUT=${2:-/tmp/exp_deploy}
STEPS=${STEPS:-40}
export HF_HUB_OFFLINE=1 DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
# PTQ: the full-precision student converted (TQ2_0 rows of width 704 fall back to Q4_0, as llama-quantize does)
for t in f16 q8_0 q4_0; do distill-export run_dir="$FP" export.gguf=$t; done
distill-export run_dir="$FP" export.gguf=tq2_0 export.fallback=q4_0
# the teacher (a model dir: the file goes into it)
TEACHER=$(grep -ao "teacher: [^ ]*" "$FP/train.log" | head -1 | cut -d' ' -f2)
mkdir -p "$OUT/teacher" && cp "$TEACHER"/* "$OUT/teacher/"
# QAT: the same student distilled STEPS more steps through ggml's quantizers; ft_fp: the same steps without
finetune() {  # name, overrides...
    local name=$1; shift
    distill-train experiment=quickstart control=false student=pretrained student.path="$FP/student" \
        trainer.max_steps="$STEPS" optim.warmup_steps=4 hydra.run.dir="$OUT/$name" "$@" 2>&1 | tail -1
}
finetune ft_fp export.gguf=f16
finetune qat_q4_0 quant=qat_q4_0
finetune qat_ternary quant=qat_ternary quant.fallback=q4_0
python experiments/deploy/measure.py "$FP" "$OUT/ft_fp" "$OUT/qat_q4_0" "$OUT/qat_ternary" --teacher "$OUT/teacher" \
    --fallback q4_0 --out "$OUT/results.json"
