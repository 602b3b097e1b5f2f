#!/usr/bin/env bash
# The rows of experiments/instruct/README.md at equal steps: one teacher (trained once, cached), the
# student four ways. The SFT control (same architecture, CE only, same data and steps) is trained at
# seed 0 beside the forward-KL and the GKD runs (the same run twice: a determinism check); the
# sequence-level KD run skips it (its training data is the teacher's answers, not the dataset's), and
# so does the seed-1 run (a 2-core machine's time).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/instruct/runs}
run() { name=$1; shift; [ -f "$OUT/$name/metrics.json" ] || distill-train experiment=instruct_quickstart "$@" hydra.run.dir="$OUT/$name"; }
run forward_kl_seed0
run gkd_seed0 loss=gkd
run seqkd_seed0 seq_kd.enabled=true control=false
# the seed-0 teacher and validation split (data.split_seed=0: the teacher never saw those conversations);
# seed=1 changes the batch order, the only random choice of a pruned student's forward-KL run
TEACHER=$(grep -oP "teacher: \K\S+/teachers/\w+" "$OUT/forward_kl_seed0/train.log" | tail -1)
run forward_kl_seed1 seed=1 data.split_seed=0 teacher.path="$TEACHER" control=false
python experiments/instruct/summarize.py "$OUT"
