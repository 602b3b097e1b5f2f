"""The preemption callback's decisions without a cluster: a fake ``scontrol`` on PATH records
what the callback asks of Slurm and answers the job's state."""

from __future__ import annotations

import os
import signal
import stat

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from distill.callbacks import preemption
from tests.trainers import quiet_trainer

FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$FAKE_SLURM_CALLS"
[ "$1" = show ] && echo "JobId=${SLURM_JOB_ID} JobName=x JobState=${FAKE_JOB_STATE} Reason=None"
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(FAKE_SCONTROL)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls"
    calls.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_CALLS", str(calls))
    monkeypatch.setenv("FAKE_JOB_STATE", "RUNNING")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    saved = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
    yield lambda: calls.read_text().splitlines()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_requeues_a_running_job(fake_slurm):
    assert preemption.requeue()
    assert fake_slurm()[-1] == "requeue 41"


def test_array_task_is_requeued_by_its_array_id(fake_slurm, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert preemption.requeue()
    assert fake_slurm()[-1] == "requeue 7_3"


@pytest.mark.parametrize("state", ["COMPLETING", "CANCELLED", "TIMEOUT"])
def test_a_job_slurm_is_ending_is_not_requeued(fake_slurm, monkeypatch, state):
    """scancel sends SIGTERM too: requeueing then would make the job impossible to cancel."""
    monkeypatch.setenv("FAKE_JOB_STATE", state)
    assert not preemption.requeue()
    assert not any(c.startswith("requeue") for c in fake_slurm())


def test_resume_only_in_a_requeued_job(tmp_path, monkeypatch):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_text("older")
    (ckpts / preemption.CKPT_NAME).write_text("newer")
    os.utime(ckpts / "last.ckpt", (1, 1))
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert preemption.resume_path(tmp_path, None) is None  # a new job never resumes silently
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert preemption.resume_path(tmp_path, None) == str(ckpts / preemption.CKPT_NAME)
    os.utime(ckpts / "last.ckpt")  # Slurm requeued without our handler: last.ckpt is newer
    os.utime(ckpts / preemption.CKPT_NAME, (1, 1))
    assert preemption.resume_path(tmp_path, None) == str(ckpts / "last.ckpt")
    assert preemption.resume_path(tmp_path, "explicit.ckpt") == "explicit.ckpt"


class SignalsItself(L.LightningModule):
    """Sends itself ``signum`` in the middle of training step ``at``."""

    def __init__(self, signum, at: int):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.signum, self.at = signum, at

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.sigterm_handler = signal.getsignal(signal.SIGTERM)
        if self.global_step == self.at:
            os.kill(os.getpid(), self.signum)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), batch_size=4)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_mid_step_checkpoints_after_the_step_then_requeues(fake_slurm, tmp_path, signum):
    ckpt = tmp_path / "checkpoints" / preemption.CKPT_NAME
    watcher = preemption.Preemption(ckpt)
    watcher.install()  # as preemption.watch() does at the start of the run
    trainer = quiet_trainer(max_steps=10, callbacks=[watcher])
    module = SignalsItself(signum, at=3)
    with pytest.raises(SystemExit) as exit_:
        trainer.fit(module)
    # ours, not Lightning's (which would end the fit at the next step without a checkpoint)
    assert module.sigterm_handler == watcher._handle
    assert exit_.value.code == preemption.EXIT_REQUEUED
    # the step that was running when the signal came finished first: a consistent state
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4
    assert fake_slurm()[-1] == "requeue 41"
