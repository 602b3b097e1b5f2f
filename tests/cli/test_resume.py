"""Exact resume: a run killed with SIGKILL after a checkpointed step and resumed with ckpt_path=last ends
with the same metrics as an uninterrupted run (CPU, deterministic mode), on one process and under DDP
(2 CPU processes, gloo: each rank resumes its own shard of the data order and its own RNG states)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.cli

ARGS = [
    "experiment=smoke",
    "trainer.max_steps=40",
    "trainer.deterministic=true",
    "control=false",
    "logger=none",
    "callbacks.model_checkpoint.every_n_train_steps=4",
]
# Two ranks on a shared 2-core machine: few steps, a checkpoint every 4, validation at step 10.
DDP = [
    "experiment=smoke",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.max_steps=12",
    "trainer.deterministic=true",
    "control=false",
    "logger=none",
    "callbacks.model_checkpoint.every_n_train_steps=4",
]
SAME = [
    "student.val_ppl",
    "student.top1_agreement",
    "student.kl_to_teacher",
    "teacher.val_ppl",
    "train.tokens",
    "train.steps",
    "student.params",
]


def _checkpoint_step(path) -> int:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["global_step"]
    except Exception:  # noqa: BLE001 - not there yet
        return -1


def _run_and_kill(args, out, cache, kill_after_step: int) -> int:
    """Start a run and SIGKILL it (every process it launched: DDP's other ranks too) as soon as a checkpoint
    of step ``kill_after_step`` or later is on disk; the step that checkpoint holds."""
    env = {**os.environ, "DISTILL_CACHE_DIR": str(cache), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill.cli.train", *args, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        step = _checkpoint_step(last) if last.exists() else -1
        if step >= kill_after_step:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is this run's processes only
            proc.wait()
            return step
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the run ended before step {kill_after_step} was checkpointed (exit {proc.returncode})")


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(smoke_run, cache_dir, tmp_path):
    full = tmp_path / "full"
    proc = run_cli([*ARGS, f"hydra.run.dir={full}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    # a fixed step: mid-epoch, mid-run, and a validation step (every 10 in smoke), so the resumed run
    # starts right after a checkpoint that was saved before that step's validation ran
    step = _run_and_kill(ARGS, killed, cache_dir, kill_after_step=20)
    assert not (killed / "metrics.json").exists()
    # what a kill in the middle of a write leaves: a temp file of a process that is gone
    leftover = killed / "checkpoints" / f"last.ckpt.partial-{socket.gethostname()}-{_dead_pid()}"
    leftover.write_bytes(b"half a checkpoint")

    resumed = run_cli([*ARGS, f"hydra.run.dir={killed}", "ckpt_path=last"], cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "removed an incomplete file" in resumed.stdout + resumed.stderr
    assert not leftover.exists()
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}, f"killed after step {step}"


@pytest.mark.slow
def test_ddp_killed_and_resumed_equals_uninterrupted(cache_dir, tmp_path):
    full = tmp_path / "full"
    proc = run_cli([*DDP, f"hydra.run.dir={full}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    step = _run_and_kill(DDP, killed, cache_dir, kill_after_step=4)  # the first checkpoint: 8 steps left
    assert not (killed / "metrics.json").exists()
    resumed = run_cli([*DDP, f"hydra.run.dir={killed}", "ckpt_path=last"], cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}, f"killed after step {step}"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
