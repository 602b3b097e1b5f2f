#!/usr/bin/env bash
# Quantization study on the quickstart (same teacher, student init, data, 400 steps for every row).
# Usage: bash experiments/quantization/run.sh [OUT]   (then: python experiments/quantization/summarize.py OUT)
set -uo pipefail
OUT=${1:-/tmp/exp_quant}
export HF_HUB_OFFLINE=1 DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
mkdir -p "$OUT"
run() {  # name, overrides...
    local name=$1; shift
    /usr/bin/time -f "$name WALL %e s" distill-train control=false hydra.run.dir="$OUT/$name" "$@" 2>&1 | tail -2
}
run full                                  # the full-precision student (bf16-mixed training)
for bits in 4 2; do
    run ptq_int8_int$bits quant=ptq_int8_int$bits
    run qat_int8_int$bits quant=qat_int8_int$bits
done
run qlora quant=qlora                     # NF4 base + LoRA r=16 vs the fully trained student
run lora student.lora.r=16                # the same adapters on a full-precision base
for load_in in bf16 8bit 4bit; do
    run teacher_$load_in teacher.load_in=$load_in
done
# generation speed of the student's shape in each form (random weights: speed depends on shape only)
python benchmarks/quant_generation.py --hidden 256 --layers 4 --vocab 4096 --rounds 5 | tee "$OUT/generation.txt"
