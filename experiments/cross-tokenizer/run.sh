#!/usr/bin/env bash
# The rows of experiments/cross-tokenizer/README.md at equal steps: the quickstart teacher (BPE 4,096,
# trained once, cached) distilled into the same from-scratch student (a 4-layer Llama of hidden 256),
# with the teacher's tokenizer (forward KL) and with tokenizers of its own (BPE 8,192 and 1,024 trained
# on the same training split: GOLD, and ULD at 8,192). Every run also trains its CE-only control with
# the student's tokenizer (same architecture, steps and text), so each row has its own control.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/cross-tokenizer/runs}
run() { name=$1; shift; [ -f "$OUT/$name/metrics.json" ] || distill-train experiment=quickstart student=scratch "$@" hydra.run.dir="$OUT/$name"; }
run same_tokenizer_kd                                   # forward KL + 0.5 CE, the teacher's BPE 4,096
run gold_8192 student.vocab_size=8192 loss=gold         # GOLD + 0.5 CE, its own BPE 8,192
run gold_1024 student.vocab_size=1024 loss=gold         # a much smaller vocabulary
run uld_8192 student.vocab_size=8192 loss=uld           # ULD + 0.5 CE
python experiments/cross-tokenizer/summarize.py "$OUT"
