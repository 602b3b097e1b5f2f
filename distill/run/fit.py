"""The fit step: one configured Lightning Trainer per model a run trains (the teacher from
scratch, the student, the control), with the callbacks, loggers and plugins each one gets."""

from __future__ import annotations

from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from distill.callbacks import preemption
from distill.callbacks.history import LossHistory
from distill.callbacks.progress import TITLES, TitledBar
from distill.callbacks.resume import ExactResume
from distill.callbacks.throughput import Throughput
from distill.checkpoint_io import AtomicCheckpointIO
from distill.run_info import log_run_info, run_info
from distill.student.lora import AdaLoraAllocator, is_adalora

ROLES = ("teacher", "student", "control")


def fit(cfg: DictConfig, module, dm, role: str, max_steps: int | None = None, plugin=None):
    """Train ``module`` as ``role``. Only the student's fit (the distillation) logs, checkpoints,
    resumes and quantizes (a quantization plugin replaces ``trainer.precision``, which it wraps);
    the teacher and control fits keep only the progress bar. Returns (trainer, throughput, loss rows)."""
    assert role in ROLES, role
    main_run = role == "student"
    meter, history = Throughput(), LossHistory()
    callbacks = [meter, history]
    if is_adalora(module.student):
        callbacks.append(AdaLoraAllocator())
    extra = {"max_steps": max_steps or cfg.trainer.max_steps}
    if main_run:
        # atomic checkpoints, loaded without pickle; RNG and mid-epoch data position saved for exact resume
        callbacks.append(ExactResume())
        callbacks += preemption.callbacks()
        extra["plugins"] = [AtomicCheckpointIO(allow_pickle=cfg.get("allow_pickle", False))]
        loggers = instantiate_all(cfg.logger)
        log_run_info(loggers, run_info(cfg))
        callbacks += [
            c for c in instantiate_all(cfg.callbacks) if loggers or not isinstance(c, LearningRateMonitor)
        ]  # it refuses to run without a logger
        extra["logger"] = loggers or False
    else:
        callbacks += instantiate_all({k: c for k, c in cfg.callbacks.items() if k == "progress_bar"})
        extra.update(logger=False, enable_checkpointing=False)
    if plugin is not None:
        extra.update(plugins=[*extra.get("plugins", []), plugin], precision=None)
        callbacks += plugin.callbacks()
    if preemption.under_slurm():  # Lightning's own hpc save/requeue off in every fit: ours, main run only
        extra["plugins"] = [*extra.get("plugins", []), preemption.slurm_environment()]
    for c in callbacks:
        if isinstance(c, TitledBar):  # an attribute, not an argument: a user's own bar class still works
            c.title = TITLES[role]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, **extra)
    ckpt_path = preemption.resume_path(cfg.paths.output_dir, cfg.ckpt_path) if main_run else None
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, meter, history.rows


def instantiate_all(group) -> list:
    """Objects from a dict-of-configs group; entries without ``_target_`` (leftover overrides of a
    preset that was switched off, e.g. ``callbacks=none`` under an experiment that tunes one) are skipped."""
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def optim_args(cfg: DictConfig) -> dict:
    return dict(cfg.optim, max_steps=cfg.trainer.max_steps)
