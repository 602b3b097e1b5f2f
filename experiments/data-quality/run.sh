#!/usr/bin/env bash
# Data-quality study on the quickstart: the same teacher, student init, held-out validation set and
# token budget (400 steps x 8 x 256 tokens) for every row; only the training split is filtered.
# Usage: bash experiments/data-quality/run.sh [OUT]   (then: python experiments/data-quality/summarize.py OUT)
set -uo pipefail
OUT=${1:-/tmp/exp_data_quality}
export HF_HUB_OFFLINE=1 DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
run() {  # name, overrides...
    local name=$1; shift
    /usr/bin/time -f "$name WALL %e s" distill-train control=false hydra.run.dir="$OUT/$name" "$@" 2>&1 | tail -2
}
run none
run code 'data/filters=[code]'
run dedup 'data/filters=[dedup]'
run code_dedup 'data/filters=[code,dedup]'
run teacher_ppl 'data/filters=[teacher_ppl]'
run teacher_ppl_low 'data/filters=[teacher_ppl]' data.filters.teacher_ppl.low_percentile=0 \
    data.filters.teacher_ppl.high_percentile=70
# MiniPLM's reference: here the unfiltered run's distilled student (same tokenizer, 4 of 8 layers)
run reference_ratio 'data/filters=[reference_ratio]' data.filters.reference_ratio.reference_path="$OUT/none/student"
# MiniPLM's own choice: a small LM trained from scratch on the same data (CE only, same tokenizer)
run reference_model teacher=none student=scratch student.preset=1m
run reference_ratio_scratch 'data/filters=[reference_ratio]' \
    data.filters.reference_ratio.reference_path="$OUT/reference_model/student"
# prose heuristics on a code corpus: expected to remove almost everything (shown, not hidden)
distill-filter 'data/filters=[web]' hydra.run.dir="$OUT/web_filter_only" 2>&1 | tail -14
