#!/usr/bin/env bash
# The measured sweep of experiments/sweep/README.md: the teacher runs once (distill-cache), then a
# 4-trial Optuna sweep on the local Slurm cluster reads its cache, then distill-report.
# Usage: experiments/sweep/run.sh [sweep dir]   (from the repo root, venv active, cluster started:
#        slurm/local-cluster.sh start)
set -euo pipefail
SWEEP=${1:-multirun/kd_sweep}
export DISTILL_CACHE_DIR=${DISTILL_CACHE_DIR:-$HOME/.cache/distill}
distill-cache experiment=smoke hydra.run.dir="$SWEEP-cache"
distill-train -m hparams_search=kd_optuna experiment=smoke hydra/launcher=slurm \
    hydra.sweep.dir="$SWEEP" hydra.sweeper.n_trials=4 hydra.sweeper.n_jobs=2 \
    hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=30
distill-report "$SWEEP"
