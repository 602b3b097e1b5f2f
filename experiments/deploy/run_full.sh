#!/usr/bin/env bash
# Deploy study at full length: the quickstart student trained 400 steps in full precision (fp), and the
# same student trained the same 400 steps from the same pruned init with QAT in ggml's formats (qat_q4_0,
# qat_q8_0, qat_ternary), rather than run.sh's 40-step QAT fine-tunes of fp. PTQ rows: fp converted. Then every file
# in llama.cpp against PyTorch (measure.py). A run whose metrics.json exists is skipped.
# Usage: bash experiments/deploy/run_full.sh [OUT]   Needs llama-cpp-python (pip install -e ".[deploy]").
set -euo pipefail
OUT=${1:-/tmp/deploy_full}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
train() {  # name, overrides...
    local name=$1; shift
    [ -f "$OUT/$name/metrics.json" ] && return 0
    /usr/bin/time -f "WALL %e s" distill-train experiment=quickstart control=false hydra.run.dir="$OUT/$name" "$@" \
        > "$OUT/$name.log" 2>&1
}
train fp
train qat_q4_0 quant=qat_q4_0
train qat_q8_0 quant=qat_q8_0
train qat_ternary quant=qat_ternary quant.fallback=q4_0   # TQ2_0 rows must be multiples of 256: down_proj (704) as Q4_0
# PTQ: the full-precision student converted (TQ2_0 falls back to Q4_0 on the same rows, as llama-quantize does)
for t in f16 q8_0 q4_0; do distill-export run_dir="$OUT/fp" export.gguf=$t; done
distill-export run_dir="$OUT/fp" export.gguf=tq2_0 export.fallback=q4_0
TEACHER=$(grep -ao "teacher: [^ ]*" "$OUT/fp/train.log" | head -1 | cut -d' ' -f2)
mkdir -p "$OUT/teacher" && cp "$TEACHER"/* "$OUT/teacher/"
python experiments/deploy/measure.py "$OUT/fp" "$OUT/qat_q4_0" "$OUT/qat_q8_0" "$OUT/qat_ternary" --teacher "$OUT/teacher" \
    --fallback q4_0 --out "$OUT/results.json"
