#!/usr/bin/env bash
# The rows of experiments/cross-tokenizer/README.md at equal steps: the quickstart teacher (BPE 4,096,
# trained once, cached) distilled into the same from-scratch student (a 4-layer Llama of hidden 256),
# with the teacher's tokenizer (forward KL) and with tokenizers of its own (BPE 8,192 and 1,024 trained
# on the same training split: GOLD). A run with a student tokenizer of its own also trains the CE-only
# control with it (same architecture, steps and text); the same-tokenizer control is a run of its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/cross-tokenizer/runs}
run() { name=$1; shift; [ -f "$OUT/$name/metrics.json" ] || distill-train experiment=quickstart student=scratch "$@" hydra.run.dir="$OUT/$name"; }
run same_tokenizer_kd control=false                     # forward KL + 0.5 CE, the teacher's BPE 4,096
# its control: CE only, the teacher's tokenizer, the same architecture, steps and rows (teacher=none)
run same_tokenizer_control teacher=none loss.weights.forward_kl=0 loss.weights.ce=1 control=false
run gold_8192 student.vocab_size=8192 loss=gold         # GOLD + 0.5 CE, its own BPE 8,192
run gold_1024 student.vocab_size=1024 loss=gold         # a much smaller vocabulary
python experiments/cross-tokenizer/summarize.py "$OUT"
