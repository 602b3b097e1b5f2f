"""End to end on a real Slurm cluster (``slurm/local-cluster.sh``): a smoke run submitted through
the submitit launcher and through the sbatch template, and a job that is signalled mid-training
(SIGUSR1, then SIGTERM after its first requeue), requeued twice, resumed, and ends with the same
metrics as the same run uninterrupted.

Skipped where Slurm is not installed, unless ``DISTILL_REQUIRE_SLURM=1`` (CI), where that fails.
The jobs are submitted together at the start so they overlap with each other's waits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TEMPLATE = REPO / "slurm" / "train.sbatch"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# deterministic kernels, no control fit; checkpoints every 5 steps tell the driver how far a job is
# enough steps that a signal sent at step 25 lands mid-training even on an idle machine (40 took ~3 s in CI)
MAX_STEPS = 150
RUN = [
    "experiment=smoke",
    "control=false",
    "trainer.deterministic=true",
    f"trainer.max_steps={MAX_STEPS}",
    "callbacks.model_checkpoint.every_n_train_steps=5",
]
# (step reached, signal): USR1 as Slurm sends it ahead of the time limit, TERM as on preemption
PREEMPT_PLAN = [(5, "USR1"), (25, "TERM")]
COMPARED = ["student.val_ppl", "student.top1_agreement", "student.kl_to_teacher", "teacher.val_ppl", "train.tokens"]


def job_env(cache: Path, **extra) -> dict:
    """What a user's shell would export to sbatch: the venv's distill-train on PATH, the test cache."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {
        **os.environ,
        "PATH": path,
        "DISTILL_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        **extra,
    }


def sbatch(workdir: Path, run_dir: Path, cache: Path, name: str, args: list[str]) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={name}", f"--chdir={workdir}", "--cpus-per-task=1", str(TEMPLATE), *args],
        env=job_env(cache, RUN_DIR=str(run_dir)),
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip().split(";")[0]


def job_info(job_id: str) -> dict:
    """``scontrol show job`` as a dict (there is no accounting database for sacct)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(what, timeout: float, poll: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = what()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(what)


def wait_done(job_id: str, timeout: float = 600) -> dict:
    return wait_for(lambda: (i := job_info(job_id)).get("JobState") in FINAL and i, timeout)


def latest_step(run_dir: Path) -> int:
    steps = [
        int(m.group(1))
        for p in (run_dir / "checkpoints").glob("step*.ckpt")
        if (m := re.fullmatch(r"step(\d+)\.ckpt", p.name))
    ]
    return max(steps, default=-1)


def preempt(job_id: str, run_dir: Path, log: list) -> None:
    """Signal the job once per plan entry, each in a later attempt, once it reached that step."""
    for restarts, (step, sig) in enumerate(PREEMPT_PLAN):

        def ready(restarts=restarts, step=step):
            info = job_info(job_id)
            return (
                info.get("JobState") == "RUNNING"
                and int(info.get("Restarts", 0)) == restarts
                and latest_step(run_dir) >= step
            )

        wait_for(ready, timeout=300, poll=0.2)
        subprocess.run(["scancel", "--signal", sig, job_id], check=True)
        log.append((sig, latest_step(run_dir)))
        wait_for(lambda restarts=restarts: int(job_info(job_id).get("Restarts", 0)) > restarts, timeout=120)


@pytest.fixture(scope="module")
def jobs(slurm_cluster, cache_dir, tmp_path_factory):
    """The uninterrupted reference and the preempted job, running side by side; a thread plays
    the preemptions while the other tests run."""
    work = tmp_path_factory.mktemp("slurm-jobs")
    ref_dir, pre_dir = work / "reference", work / "preempted"
    ref = sbatch(work, ref_dir, cache_dir, "distill-ref", RUN)
    pre = sbatch(work, pre_dir, cache_dir, "distill-preempt", RUN)
    signals: list = []
    errors: list = []

    def drive():
        try:
            preempt(pre, pre_dir, signals)
        except Exception as exc:  # reported by the test that needs it
            errors.append(exc)
            subprocess.run(["scancel", pre])

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    yield {
        "work": work,
        "reference": (ref, ref_dir),
        "preempted": (pre, pre_dir),
        "driver": driver,
        "signals": signals,
        "errors": errors,
    }
    subprocess.run(["scancel", ref, pre], capture_output=True)


def job_log(work: Path, name: str, job_id: str) -> str:
    return (work / f"slurm-{name}-{job_id}.out").read_text(errors="replace")


def test_sbatch_template_runs_a_smoke_run(jobs):
    job_id, run_dir = jobs["reference"]
    info = wait_done(job_id)
    assert info["JobState"] == "COMPLETED", job_log(jobs["work"], "distill-ref", job_id)[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train.steps"] == MAX_STEPS and metrics["student.val_ppl"] > 1
    assert (run_dir / "student" / "config.json").is_file()


def test_submitit_launcher_runs_a_smoke_run(jobs, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1",
            f"hydra.sweep.dir={sweep}",
            "experiment=smoke",
            "control=false",
            "trainer.max_steps=10",
        ],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["train.steps"] == 10
    # it really went through Slurm: submitit's job folder, named by the Slurm job id
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert logs and "SLURM_JOB_ID" not in proc.stderr
    assert any("distill.run." in p.read_text(errors="replace") for p in logs)


def test_signalled_job_requeues_resumes_and_matches_an_uninterrupted_run(jobs):
    job_id, run_dir = jobs["preempted"]
    jobs["driver"].join(timeout=600)
    assert not jobs["errors"], jobs["errors"]
    info = wait_done(job_id)
    log = job_log(jobs["work"], "distill-preempt", job_id)
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert int(info["Restarts"]) == len(PREEMPT_PLAN)
    # each signal was answered inside the fit: a checkpoint mid-training, then a resume from it
    saved = [int(s) for s in re.findall(r"preemption checkpoint at step (\d+)", log)]
    assert len(saved) == len(PREEMPT_PLAN) and all(0 < s < MAX_STEPS for s in saved), log[-3000:]
    assert saved == sorted(saved) and saved[0] >= PREEMPT_PLAN[0][0]
    assert log.count("resuming the distillation run from") == len(PREEMPT_PLAN)
    assert [sig for sig, _ in jobs["signals"]] == ["USR1", "TERM"]

    ref_id, ref_dir = jobs["reference"]
    assert wait_done(ref_id)["JobState"] == "COMPLETED"
    ref = json.loads((ref_dir / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in COMPARED:
        assert got[key] == pytest.approx(ref[key], rel=1e-6), (key, got[key], ref[key])
