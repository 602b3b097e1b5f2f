"""Combinations of teacher, student, objective and trainer that cannot work in a causal-LM run,
each refused in one line before any data or model work."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.quant.config import check_load_in
from distill.run.student import student_needs_teacher
from distill.run.teachers_config import check_teachers, several
from distill.strategies import check_strategy
from distill.teacher.source import KINDS

log = logging.getLogger(__name__)


def teacher_kind(cfg: DictConfig) -> str:
    kind = cfg.teacher.get("backend", "live")
    if kind not in KINDS:
        raise DistillError(f"teacher.backend must be live, cache or none, got {kind!r}")
    return kind


def check_combination(cfg: DictConfig, loss: Objective) -> None:
    check_strategy(cfg.trainer, loss, cfg.get("quant"), cfg.teacher.get("load_in"))  # deepspeed/fsdp that cannot run
    check_load_in(cfg.teacher.get("load_in"))
    kind = teacher_kind(cfg)
    if several(cfg):  # teachers=[...]: each entry's kind is checked against the objective there
        check_teachers(cfg, loss)
        kind = "several"
    if kind == "none":
        if student_needs_teacher(cfg):
            raise DistillError(
                "teacher=none has no teacher to prune the student from: use student=scratch or student=pretrained"
            )
        if loss.needs_teacher():
            log.info("teacher=none: training on the data with CE only (the teacher's knowledge is in the responses)")
    if kind == "cache":
        needs_live = loss.needs_live_teacher()  # the reasons, from the registry of terms (distill/losses/terms.py)
        if needs_live:
            raise DistillError(
                f"{needs_live[0]} needs a live teacher, but teacher=cache stores only top-k log-probabilities"
            )
    if cfg.data.get("packing") and loss.on_policy.lmbda > 0:
        raise DistillError(
            "data.packing=true with on-policy distillation (loss.on_policy.lmbda > 0): the student answers each "
            "conversation's prompt in a row of its own; use data.packing=false"
        )
