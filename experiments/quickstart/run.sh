#!/usr/bin/env bash
# The quickstart, as measured: a first run (trains the tokenizer and the teacher) and a second run
# (teacher cached), then the README from the second run's metrics.json and report.png.
# Usage: bash experiments/quickstart/run.sh [OUT]   (about 10 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-/tmp/exp_quickstart}
HERE=$(cd "$(dirname "$0")" && pwd)
export HF_HUB_OFFLINE=1 DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$OUT/cache}
mkdir -p "$OUT"
for run in first second; do
    start=$(date +%s)
    distill-train hydra.run.dir="$OUT/$run" 2>&1 | tail -2
    echo $(( $(date +%s) - start )) > "$OUT/$run/wall_s.txt"
done
# teacher and student side by side (quality, size, speed on this machine)
TEACHER=$(python -c "import json; print(json.load(open('$OUT/second/metrics.json'))['teacher.path'])")
distill-eval hydra.run.dir="$OUT/eval" "models={teacher: $TEACHER, student: $OUT/second/student}" 2>&1 | tail -1
cp "$OUT/second/metrics.json" "$OUT/second/report.png" "$OUT/eval/eval.json" "$HERE/"
python "$HERE/summarize.py" --first-wall "$(cat "$OUT/first/wall_s.txt")" --second-wall "$(cat "$OUT/second/wall_s.txt")"
