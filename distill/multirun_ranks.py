"""Local ranks under a Hydra multirun: each job of a sweep starts its own DDP / FSDP2 ranks as that
one job, not as the whole sweep again, and the next job does not reuse the previous job's ranks."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

# Hydra's own command-line flags that take a value (kept for the child: they locate the config)
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def child_command(argv: list[str], job_overrides: list[str], output_dir: str, local_rank: int) -> list[str]:
    """The command for local rank ``local_rank`` of one multirun job: this job as a single run
    (its own resolved overrides, its own output dir), keeping only the flags that locate the config.
    ``argv`` is the parent's ``sys.argv[1:]``."""
    flags, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            flags += argv[i : i + 2]
            i += 1
        elif arg.split("=", 1)[0] in _CONFIG_FLAGS:
            flags.append(arg)
        i += 1
    return [
        *flags,
        *job_overrides,
        f'hydra.run.dir="{output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]


def launch_ranks_as_this_job() -> None:
    """Under a Hydra multirun, make Lightning start the other local ranks (DDP, FSDP2) as this one
    job. Lightning re-runs ``sys.argv`` for them with ``hydra.run.dir`` added, which under ``-m``
    re-runs the whole sweep in each child (measured: every job's rank 1 launched the sweep again).
    A no-op for single runs and for ranks started externally (SLURM tasks, torchrun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from lightning.pytorch.strategies.launchers import subprocess_script as launcher
    except ImportError:
        return
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    fresh_ranks_for_this_job()
    if not hasattr(launcher, "_hydra_subprocess_cmd"):
        log.warning(
            "this Lightning version launches local ranks differently: multirun with several "
            "local processes is untested with it"
        )
        return

    def command(local_rank: int):
        import sys

        from hydra.utils import get_original_cwd, to_absolute_path

        import __main__

        hydra_cfg = HydraConfig.get()
        spec = getattr(__main__, "__spec__", None)
        head = (
            [sys.executable, "-m", spec.name] if spec is not None else [sys.executable, to_absolute_path(sys.argv[0])]
        )
        tail = child_command(sys.argv[1:], list(hydra_cfg.overrides.task), hydra_cfg.runtime.output_dir, local_rank)
        return head + tail, get_original_cwd()

    launcher._hydra_subprocess_cmd = command


# what Lightning's launcher exports in the parent process once it has started local ranks
_LAUNCH_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_ENV_BEFORE_FIRST_JOB: dict[str, str | None] | None = None


def fresh_ranks_for_this_job() -> None:
    """Between the jobs of a local multirun, forget the previous job's ranks: its children have
    exited, but its process group and Lightning's exported LOCAL_RANK/MASTER_PORT would make the
    next job's Trainer reuse them (measured: "Connection closed by peer" in job 1), instead of
    starting its own children. The environment goes back to what it was before the first job."""
    global _ENV_BEFORE_FIRST_JOB
    if _ENV_BEFORE_FIRST_JOB is None:
        _ENV_BEFORE_FIRST_JOB = {k: os.environ.get(k) for k in _LAUNCH_VARS}
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in _ENV_BEFORE_FIRST_JOB.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
