"""What every distill command does before its own work, so a check added here holds everywhere:
the config validated, the load policy set, the inputs checked, the run dir cleaned, the seed set."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from distill.cache import clean_leftovers
from distill.callbacks import preemption
from distill.config import validate
from distill.multirun_ranks import launch_ranks_as_this_job
from distill.ranks import is_main_process
from distill.run.teachers_config import place_teachers
from distill.safety import check_device, check_write_paths, set_load_policy, weight_kwargs
from distill.strategies import strategy_that_runs_here
from distill.teacher.load import check_context, check_model_dir, check_tokenizer_dir

log = logging.getLogger(__name__)


def setup_run(cfg: DictConfig, app: str, preemptible: bool = False) -> Path:
    """Checks in one place, before any data or model work; returns the run dir (created).
    ``preemptible``: under SLURM, checkpoint and requeue on SIGUSR1/USR2/TERM (training runs)."""
    validate(cfg, app)  # types, ranges and key names of every group
    set_load_policy(cfg.get("allow_pickle", False), cfg.get("trust_remote_code", False))
    strategy_that_runs_here(cfg.trainer)  # a preset that cannot run here says why, before the generic device check
    check_device(cfg)
    check_write_paths(cfg)
    place_teachers(cfg)  # teachers=[...]: checked, and the first placed in `teacher` for every step below
    check_model_dirs(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if preemptible:
        preemption.watch(out)
    launch_ranks_as_this_job()  # under -m, Lightning's local ranks (ddp, fsdp) run this job, not the whole sweep
    clean_run_dir(out)
    return out


def seed(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True)


def check_model_dirs(cfg: DictConfig) -> None:
    """``teacher.path`` and ``student.path``: model dirs whose weights load under the policy
    (pickle-only weights refused unless ``allow_pickle``), with a tokenizer (the teacher's) and
    positions for ``data.seq_len``."""
    seq_len = cfg.data.get("seq_len")
    if cfg.teacher.get("path"):
        weight_kwargs(check_model_dir(cfg.teacher.path), "teacher.path")
        if cfg.get("task", "causal_lm") == "causal_lm":
            check_tokenizer_dir(cfg.teacher.path)
            check_context(cfg.teacher.path, seq_len)
    if cfg.student.get("path"):
        weight_kwargs(check_model_dir(cfg.student.path, "student.path"), "student.path")
        check_context(cfg.student.path, seq_len, "student.path")


def clean_run_dir(out: Path) -> None:
    """Remove what a killed earlier attempt in this run dir left half-written (a resumed run reuses it)."""
    if is_main_process():
        for leftover in clean_leftovers(out):
            log.warning("removed an incomplete file left by a killed run: %s", leftover)


def device_of(cfg: DictConfig) -> str:
    return "cuda" if cfg.trainer.get("accelerator") in ("gpu", "cuda") else "cpu"


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
