#!/usr/bin/env bash
# The rows of experiments/cross-tokenizer/README.md at equal steps: the quickstart teacher (BPE 4,096,
# trained once, cached) distilled into the same from-scratch student (a 4-layer Llama of hidden 256),
# with the teacher's tokenizer (forward KL) and with tokenizers of its own (byte-level BPE 8,192 and
# 1,024 and a SentencePiece-style BPE 4,096, trained on the same training split: GOLD; and the projected
# KL at 1,024). A GOLD run also trains the CE-only control with its tokenizer (same architecture, steps and
# text); the same-tokenizer control is a run of its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/cross-tokenizer/runs}
# ONLY="<run> ...": those runs alone; a run whose metrics.json exists is skipped
run() {
    name=$1; shift
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
    [ -f "$OUT/$name/metrics.json" ] || distill-train experiment=quickstart student=scratch "$@" hydra.run.dir="$OUT/$name"
}
run same_tokenizer_kd control=false                     # forward KL + 0.5 CE, the teacher's BPE 4,096
# its control: CE only, the teacher's tokenizer, the same architecture, steps and rows (teacher=none)
run same_tokenizer_control teacher=none loss.weights.forward_kl=0 loss.weights.ce=1 control=false
# another family's tokenizer of the teacher's size: SentencePiece-style BPE ('▁' spaces, byte fallback)
run gold_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=gold
# another byte-level family of the teacher's size: split by Llama 3's pattern (digits in threes, punctuation
# with the newline after it), as Llama 3 and Qwen2 split text
run gold_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=gold
# GOLD on the one-to-one spans only (loss.gold.spans=one_to_one); the controls are the GOLD runs' (same tokenizer)
run gold_4096_llama3_o2o student.vocab_size=4096 student.tokenizer_style=llama3 loss=gold loss.gold.spans=one_to_one control=false
run gold_4096_sp_o2o student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=gold loss.gold.spans=one_to_one control=false
# ALM (the likelihood of each aligned span's text, loss=alm) in GOLD's place; the controls are the GOLD runs'
run alm_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=alm control=false
run alm_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=alm control=false
# ALM over word chunks, each scored with the space after it (loss.alm.chunks=words: one event for both models)
run alm_words_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=alm loss.alm.chunks=words control=false
run alm_words_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=alm loss.alm.chunks=words control=false
# ALM at tokenkit's binarization temperature (τ = 100: the binary KL of ℓ/τ, near the log-ratio of the two likelihoods)
run alm_tau100_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=alm loss.alm.binarization=100 control=false
run alm_words_tau100_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=alm loss.alm.chunks=words loss.alm.binarization=100 control=false
# prefix KL: both distributions summed by the longest shared string each token begins with (loss=prefix_kl)
run prefix_kl_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl control=false
run prefix_kl_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=prefix_kl control=false
run prefix_kl_cut_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both control=false
run prefix_kl_cut_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=prefix_kl loss.prefix_kl.cuts=both control=false
run prefix_kl2_cut_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.weights.prefix_kl=2 control=false
run prefix_kl_obs_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=observed control=false
run prefix_kl05_cut_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.weights.prefix_kl=0.5 control=false
run prefix_kl_cut_t2_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.temperature=2 control=false
run prefix_kl_within_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=within control=false
run prefix_kl_cut_gold_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both +loss.weights.gold=0.5 loss.gold.spans=one_to_one control=false
run prefix_kl_cut_gold1_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both +loss.weights.gold=1 loss.gold.spans=one_to_one control=false
run prefix_kl_cut_goldall_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both +loss.weights.gold=0.5 control=false
# and the KL inside the class of the text's next token, the teacher's class split by its next row (loss.prefix_kl.within)
run prefix_kl_cut_split_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.prefix_kl.within=1 control=false
run prefix_kl_cut_split_both_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.prefix_kl.within=1 loss.prefix_kl.within_rows=both control=false
run prefix_kl_cut_split2_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.prefix_kl.within=2 control=false
run prefix_kl_split_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=prefix_kl loss.prefix_kl.within=1 control=false
run prefix_kl_split_both_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=prefix_kl loss.prefix_kl.within=1 loss.prefix_kl.within_rows=both control=false
# dual-space KD (loss=dual_space: each model's final hidden state read by the other's LM head), alone, in the
# teacher's vocabulary only, and beside the prefix KL
run dual_space_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=dual_space control=false
run dual_space_t_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=dual_space loss.dual_space.spaces=teacher control=false
run prefix_kl_cut_split_ds_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.prefix_kl.within=1 +loss.weights.dual_space=1 control=false
run prefix_kl_cut_split_dst_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=both loss.prefix_kl.within=1 +loss.weights.dual_space=1 loss.dual_space.spaces=teacher control=false
# the spans cut inside a piece kept (cuts=observed / within), every span at the weight cuts=both gives its admitted ones
run prefix_kl_obs14_split_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=observed loss.prefix_kl.within=1 loss.weights.prefix_kl=1.4 control=false
run prefix_kl_win14_split_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=within loss.prefix_kl.within=1 loss.weights.prefix_kl=1.4 control=false
# the student's rows no span starts at (inside a span: the prefix KL never reads them) at the control's CE: 0.5 + 0.5;
# and its ablation: the same CE added evenly (0.5 -> 0.56: 12.7% of the training rows are inside a span)
run prefix_kl_win14_split_unc05_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=within loss.prefix_kl.within=1 loss.weights.prefix_kl=1.4 loss.prefix_kl.uncovered_ce=0.5 control=false
run prefix_kl_win14_split_ce056_4096_llama3 student.vocab_size=4096 student.tokenizer_style=llama3 loss=prefix_kl loss.prefix_kl.cuts=within loss.prefix_kl.within=1 loss.weights.prefix_kl=1.4 loss.weights.ce=0.56 control=false
# that objective as the preset loss=cross_tokenizer, with the SentencePiece-style split and at 1,024 (one seed each;
# their controls: prefix_kl_win14_split_1024 trains the 1,024 one, the SentencePiece-style one is gold_4096_sp's)
run prefix_kl_win14_split_unc05_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=cross_tokenizer control=false
run prefix_kl_split_unc05_4096_sp student.vocab_size=4096 student.tokenizer_style=sentencepiece loss=prefix_kl loss.prefix_kl.within=1 loss.prefix_kl.uncovered_ce=0.5 control=false
run prefix_kl_win14_split_1024 student.vocab_size=1024 loss=prefix_kl loss.prefix_kl.cuts=within loss.prefix_kl.within=1 loss.weights.prefix_kl=1.4
run prefix_kl_win14_split_unc05_1024 student.vocab_size=1024 loss=cross_tokenizer control=false
run gold_8192 student.vocab_size=8192 loss=gold         # GOLD + 0.5 CE, its own BPE 8,192
run gold_1024 student.vocab_size=1024 loss=gold         # a much smaller vocabulary
# the projection (loss=projected_kl + 0.5 CE) where GOLD's shared strings are fewest; its control is the
# GOLD run's (the same tokenizer, architecture, steps and text; a run is deterministic)
run projected_kl_1024 student.vocab_size=1024 loss=projected_kl control=false
python experiments/cross-tokenizer/summarize.py "$OUT" ${SUMMARIZE_FLAGS:-}
