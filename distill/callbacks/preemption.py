"""Preemption under SLURM: on SIGUSR1/SIGUSR2 (the warning ahead of the time limit) or SIGTERM
(preemption), checkpoint the distillation run at the next step boundary, requeue the job, exit;
the requeued job finds the checkpoint in the same run dir and resumes from it.

Why not Lightning's own ``SLURMEnvironment(auto_requeue=True)``: its handler saves the checkpoint
inside the signal handler, i.e. possibly in the middle of an optimizer step (a checkpoint a
resumed run cannot continue exactly from); it does not requeue on SIGTERM (the fit loop just
exits); and on restart *every* ``trainer.fit(ckpt_path=None)`` under SLURM resumes from the hpc
checkpoint, which here would load the distillation state into the teacher's and the control's
fits. So the handler only raises a flag, the checkpoint is written where ModelCheckpoint writes
its own (``on_train_batch_end``), only the main run ever writes or reads it, and every fit under
SLURM gets ``SLURMEnvironment(auto_requeue=False)``, so Lightning installs no hpc handler.
Outside the main fit (data preparation, teacher training, control, evaluation) there is no
training state to save: the job requeues at once and the restart redoes that (cached) work.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from distill.ranks import is_main_process

log = logging.getLogger(__name__)

# USR1: sbatch --signal=USR1@N (our templates); USR2: submitit's --signal; TERM: preemption, scancel
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
CKPT_NAME = "requeue.ckpt"
# exit status after a requeue; Slurm ends the job steps anyway, the job itself is pending again
EXIT_REQUEUED = 0
EXIT_NOT_REQUEUED = 3

_active: Preemption | None = None


def under_slurm() -> bool:
    """A batch job step (srun/sbatch), not an interactive shell on an allocation."""
    return SLURMEnvironment.detect()


def slurm_environment() -> SLURMEnvironment:
    """Lightning's SLURM environment (ranks, addresses from Slurm) with its requeue handling off, so
    no fit, main or not, ever installs Lightning's hpc-checkpoint SIGUSR1 handler."""
    return SLURMEnvironment(auto_requeue=False)


def job_id() -> str | None:
    """The id ``scontrol requeue`` takes: an array task as ``<array job>_<task>`` (submitit's sweeps
    are array jobs)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def job_state(jid: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "UNKNOWN")


def requeue() -> bool:
    """``scontrol requeue`` this job while it is still RUNNING. A job Slurm is already ending
    (COMPLETING: ``scancel``, the time limit, Slurm's own preemption) is left to Slurm: ``scancel``
    sends SIGTERM too, and Slurm accepts the requeue of a completing job (measured, 22.05), which
    would make a job impossible to cancel."""
    jid = job_id()
    if not jid:
        return False
    state = job_state(jid)
    if state != "RUNNING":
        log.warning("job %s is %s (cancelled, timed out or ended by Slurm): not requeued", jid, state)
        return False
    proc = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True)
    if proc.returncode != 0:
        log.error("scontrol requeue %s failed: %s", jid, proc.stderr.strip())
        return False
    log.info("requeued SLURM job %s", jid)
    return True


def watch(run_dir: str | Path) -> Preemption | None:
    """Install the signal handlers for this process when it runs under SLURM (else None)."""
    global _active
    if not under_slurm():
        return None
    _active = Preemption(Path(run_dir) / "checkpoints" / CKPT_NAME)
    _active.install()
    return _active


def callbacks() -> list[L.Callback]:
    """For the main (distillation) fit only: the installed watcher, if any."""
    return [_active] if _active is not None else []


def resume_path(run_dir: str | Path, ckpt_path: str | None) -> str | None:
    """The checkpoint the main fit starts from: ``ckpt_path`` when given; in a requeued job
    (``SLURM_RESTART_COUNT`` > 0) the newest of our preemption checkpoint and ModelCheckpoint's
    ``last.ckpt`` (Slurm may have requeued the job itself, e.g. on node failure, without our
    handler running). A new job never resumes silently, even in a reused run dir."""
    if ckpt_path is not None:
        return ckpt_path
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) == 0:
        return None
    ckpts = Path(run_dir) / "checkpoints"
    candidates = [p for p in (ckpts / CKPT_NAME, ckpts / "last.ckpt") if p.exists()]  # FSDP: a directory
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    log.info("requeued job: resuming the distillation run from %s", newest)
    return str(newest)


class Preemption(L.Callback):
    def __init__(self, ckpt_path: Path):
        self.ckpt_path = Path(ckpt_path)
        self.signalled: int | None = None
        self.in_fit = False
        self._done = False

    def install(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self._done:  # Slurm's own SIGTERM after our requeue: we are exiting already
            return
        name = signal.Signals(signum).name
        if self.in_fit:
            log.warning("%s: checkpointing after this step, then requeueing the job", name)
            self.signalled = signum
            return
        # No training state to save here: requeue now, the restart redoes this part from its caches.
        log.warning("%s outside the distillation fit: requeueing", name)
        self._exit(requeue() if is_main_process() else True)

    def _exit(self, requeued: bool) -> None:
        self._done = True
        if not requeued:
            log.error(
                "the job was not requeued; to resume, resubmit it with ckpt_path=%s hydra.run.dir=%s",
                self.ckpt_path,
                self.ckpt_path.parent.parent,
            )
        raise SystemExit(EXIT_REQUEUED if requeued else EXIT_NOT_REQUEUED)

    # -- the main fit --------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning registered its SIGTERM handler when the fit started (it makes the loop exit
        # at the next step without a checkpoint): ours goes back on top for the main fit.
        self.install()
        self.in_fit = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._any_rank_signalled(trainer):
            self._checkpoint_and_requeue(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # Saved unconditionally: a job preempted later (control, evaluation, export) then resumes
        # a finished fit instead of training it again. One checkpoint per SLURM run.
        trainer.save_checkpoint(self.ckpt_path)
        self.in_fit = False  # after the save: a signal during it is answered below, not mid-write
        if self._any_rank_signalled(trainer):
            self._requeue_and_exit(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.in_fit = False

    def _any_rank_signalled(self, trainer) -> bool:
        """Ranks may see the signal at different steps: all stop at the first step any saw it."""
        flag = self.signalled is not None
        if trainer.world_size > 1:
            flag = bool(
                trainer.strategy.reduce(
                    torch.tensor(int(flag), device=trainer.strategy.root_device), reduce_op="sum"
                ).item()
            )
        return flag

    def _checkpoint_and_requeue(self, trainer) -> None:
        self.in_fit = False
        trainer.save_checkpoint(self.ckpt_path)  # every rank takes part (sharded strategies); rank 0 writes
        log.info("preemption checkpoint at step %d: %s", trainer.global_step, self.ckpt_path)
        self._requeue_and_exit(trainer)

    def _requeue_and_exit(self, trainer) -> None:
        trainer.strategy.barrier("preemption")  # the checkpoint is complete before Slurm kills anything
        self._exit(requeue() if trainer.is_global_zero else True)
