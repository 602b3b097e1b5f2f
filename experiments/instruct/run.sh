#!/usr/bin/env bash
# The rows of experiments/instruct/README.md: one teacher (trained once, cached), then the student
# four ways at equal steps. Every run also trains the SFT control (same architecture, CE only), so
# the control row has one value per run: its spread is the seed-to-seed noise at equal settings.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/instruct/runs}
run() { name=$1; shift; [ -f "$OUT/$name/metrics.json" ] || distill-train experiment=instruct_quickstart "$@" hydra.run.dir="$OUT/$name"; }
run forward_kl_seed0
run forward_kl_seed1 seed=1
run gkd_seed0 loss=gkd
run seqkd_seed0 seq_kd.enabled=true
python experiments/instruct/collect.py "$OUT"
