#!/usr/bin/env bash
# The rows of experiments/cross-tokenizer/README.md at equal steps: the quickstart teacher (BPE 4,096,
# trained once, cached) distilled into the same from-scratch student (a 4-layer Llama of hidden 256),
# with the teacher's tokenizer (forward KL) and with tokenizers of its own (BPE 8,192 and 1,024 trained
# on the same training split: GOLD, and ULD at 8,192). A run with a new student tokenizer also trains
# the CE-only control with it (same architecture, steps and text); ULD at 8,192 shares GOLD's control (the
# same run), and the same-tokenizer row needs none (a 2-core machine's time).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/cross-tokenizer/runs}
run() { name=$1; shift; [ -f "$OUT/$name/metrics.json" ] || distill-train experiment=quickstart student=scratch "$@" hydra.run.dir="$OUT/$name"; }
run same_tokenizer_kd control=false                     # forward KL + 0.5 CE, the teacher's BPE 4,096
run gold_8192 student.vocab_size=8192 loss=gold         # GOLD + 0.5 CE, its own BPE 8,192
run gold_1024 student.vocab_size=1024 loss=gold         # a much smaller vocabulary
run uld_8192 student.vocab_size=8192 loss=uld control=false  # ULD + 0.5 CE
python experiments/cross-tokenizer/summarize.py "$OUT"
