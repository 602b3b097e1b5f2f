#!/usr/bin/env bash
# The 4x speed goal at the quickstart's size: a student a quarter of the teacher's depth (student=depth
# student.num_layers=2, pruned from the 8-layer teacher by block importance) with its token embedding / tied
# head in a block type too (the head is the largest matrix of a model this small: 4,096 x 256).
# For each seed S and each embedding type E in EMBS: the student trained 400 steps in full precision
# (d2_fp_s<S>: exported F16), Q4_0 by PTQ with embeddings E (d2_ptq_e<E>_s<S>: the fp student exported
# again, export.embeddings=E), and QAT as the last phase of the same 400 steps (d2_qat_e<E>_s<S>:
# quant=qat_q4_0 quant.start_step=FROM quant.embeddings=E, so QAT trains the embedding in E as well);
# measure.py on that seed's validation split (results_d2_s<S>.json), then the speed of every file against
# the F16 teacher (speed_d2.txt).
# Usage: TEACHER=<dir> [SEEDS="0 1 2"] [EMBS="q8_0 q4_0"] [FROM=300] bash experiments/deploy/depth2.sh [OUT]
set -euo pipefail
OUT=${1:-/tmp/deploy_depth2}
TEACHER=${TEACHER:?set TEACHER=<the quickstart teacher dir>}
SEEDS=${SEEDS:-0 1 2}
EMBS=${EMBS:-q8_0 q4_0}
FROM=${FROM:-300}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
source "$(dirname "$0")/train.sh"  # train NAME OVERRIDES...
D2="student=depth student.num_layers=2"  # every run of this study
for s in $SEEDS; do
    train "d2_fp_s$s" $D2 seed="$s"
    [ -f "$OUT/d2_fp_s$s/student.f16.gguf" ] || distill-export run_dir="$OUT/d2_fp_s$s" export.gguf=f16
    runs=("$OUT/d2_fp_s$s")
    for e in $EMBS; do
        ptq="$OUT/d2_ptq_e${e}_s$s"
        mkdir -p "$ptq" && ln -sfn "../d2_fp_s$s/student" "$ptq/student"
        [ -f "$ptq/student.q4_0.gguf" ] || distill-export run_dir="$ptq" export.gguf=q4_0 export.embeddings="$e"
        train "d2_qat_e${e}_s$s" $D2 seed="$s" quant=qat_q4_0 quant.start_step="$FROM" quant.embeddings="$e"
        runs+=("$ptq" "$OUT/d2_qat_e${e}_s$s")
    done
    [ -f "$OUT/results_d2_s$s.json" ] || python experiments/deploy/measure.py "${runs[@]}" --seed "$s" \
        --override teacher.path="$TEACHER" --out "$OUT/results_d2_s$s.json"
done
s=${SEEDS%% *}
[ -f "$TEACHER/student.f16.gguf" ] || distill-export run_dir="$TEACHER" export.gguf=f16
python benchmarks/gguf_generation.py "$TEACHER/student.f16.gguf" "$OUT/d2_fp_s$s/student.f16.gguf" \
    "$OUT"/d2_ptq_e*_s"$s"/student.q4_0.gguf "$OUT"/d2_qat_e*_s"$s"/student.q4_0.gguf --rounds 7 \
    2>/dev/null | tee "$OUT/speed_d2.txt"
