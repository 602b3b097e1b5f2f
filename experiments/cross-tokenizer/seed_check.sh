#!/usr/bin/env bash
# The Llama 3-style comparison again at another initialisation: the same data split, teacher and tokenizers
# (data.seed=0, the cached quickstart teacher), only the run seed changed (the students' initial weights and
# what else the run seed draws). The runs: the same-tokenizer KD student and control (the gap's two ends
# need both), the control with the Llama 3-style tokenizer, and the best cross-tokenizer objectives.
# Usage: TEACHER=<the quickstart teacher dir> SEED=1 [BEST_ONLY=1] bash experiments/cross-tokenizer/seed_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/xtok_seeds}
TEACHER=${TEACHER:?set TEACHER=<the quickstart teacher dir>}
SEED=${SEED:-1}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
run() {
    local name=s${SEED}_$1; shift
    [ -f "$OUT/$name/metrics.json" ] || distill-train experiment=quickstart student=scratch seed="$SEED" data.seed=0 \
        teacher.path="$TEACHER" "$@" hydra.run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
L3="student.vocab_size=4096 student.tokenizer_style=llama3"
run same_tokenizer_kd control=false
run same_tokenizer_control teacher=none loss.weights.forward_kl=0 loss.weights.ce=1 control=false
run prefix_kl_cut_4096_llama3 $L3 loss=prefix_kl loss.prefix_kl.cuts=both   # trains the Llama 3-style control too
run prefix_kl_cut_split_4096_llama3 $L3 loss=prefix_kl loss.prefix_kl.cuts=both loss.prefix_kl.within=1 control=false
# spans cut inside a piece kept on the classes of their own character class (cuts=within), every span at the
# weight cuts=both gives its admitted ones (1.4: 29% of the spans are inside a piece)
run prefix_kl_win14_split_4096_llama3 $L3 loss=prefix_kl loss.prefix_kl.cuts=within loss.prefix_kl.within=1 \
    loss.weights.prefix_kl=1.4 control=false
# and the rows no span starts at (the student's tokens inside a span) at the control's CE (uncovered_ce = 0.5)
run prefix_kl_win14_split_unc05_4096_llama3 $L3 loss=prefix_kl loss.prefix_kl.cuts=within loss.prefix_kl.within=1 \
    loss.weights.prefix_kl=1.4 loss.prefix_kl.uncovered_ce=0.5 control=false
if [ -z "${BEST_ONLY:-}" ]; then  # BEST_ONLY=1: the rows above alone (seeds 3 and 4)
    run prefix_kl_cut_gold_4096_llama3 $L3 loss=prefix_kl loss.prefix_kl.cuts=both +loss.weights.gold=0.5 \
        loss.gold.spans=one_to_one control=false
    run prefix_kl_cut_split_both_4096_llama3 $L3 loss=prefix_kl loss.prefix_kl.cuts=both loss.prefix_kl.within=1 \
        loss.prefix_kl.within_rows=both control=false
fi
python - "$OUT" "$SEED" <<'PY'
import json, sys
out, seed = sys.argv[1], sys.argv[2]
bpb = lambda name, who="student": json.load(open(f"{out}/s{seed}_{name}/metrics.json"))[f"{who}.bits_per_byte"]
same, same_control = bpb("same_tokenizer_kd"), bpb("same_tokenizer_control")
control = bpb("prefix_kl_cut_4096_llama3", "baseline")
print(f"seed {seed}: same-tokenizer KD {same:.4f} (its control {same_control:.4f}); Llama 3-style control {control:.4f}")
for name in ("prefix_kl_cut_4096_llama3", "prefix_kl_cut_gold_4096_llama3", "prefix_kl_cut_split_4096_llama3",
             "prefix_kl_cut_split_both_4096_llama3", "prefix_kl_win14_split_4096_llama3",
             "prefix_kl_win14_split_unc05_4096_llama3"):
    try:
        s = bpb(name)
    except FileNotFoundError:  # not run (BEST_ONLY)
        continue
    print(f"  {name}: {s:.4f}, closes {(control - s) / (control - same):.2f} of the gap (goal >= 0.5)")
PY
