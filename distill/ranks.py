"""Rank-safe helpers for multi-process runs: which process is global rank 0 (also before the process
group exists), rank-0-only cache entries that every rank waits for, and how many processes share the data."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from distill.errors import DistillError


def is_main_process() -> bool:
    """True on global rank 0. Valid before the process group exists too (read from the launcher's
    environment: torchrun's RANK, SLURM_PROCID, or Lightning's LOCAL_RANK / NODE_RANK), which is
    when a rank builds the student and writes its reports."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    # a non-zero local or node rank is never global rank 0 (a child that Lightning started inside a
    # one-task SLURM job inherits SLURM_PROCID=0 from its parent)
    if any(os.environ.get(v, "0").strip() not in ("", "0") for v in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK")):
        return False
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return True


def after_rank_zero(build: Callable[[Path], None], final: Path, timeout_s: float = 1800.0) -> Callable[[Path], None]:
    """A ``cache.cached_dir`` builder for work every rank shares (a distributed fit) but only global
    rank 0 saves: transformers' ``save_pretrained`` writes on rank 0 alone once a process group
    exists, so another rank's temp dir holds no weights and must never be renamed into place. Other
    ranks return only once rank 0's entry exists (their rename onto it then fails, as cached_dir
    expects). Several nodes need a cache_dir on a shared file system."""

    def run(tmp: Path) -> None:
        build(tmp)
        if is_main_process():
            return
        deadline = time.monotonic() + timeout_s
        while not final.is_dir():
            if time.monotonic() > deadline:
                raise DistillError(
                    f"rank 0 never published {final}: on several nodes paths.cache_dir must be on a shared file system"
                )
            time.sleep(0.2)

    return run


def data_parallel_size(devices, num_nodes: int = 1):
    """How many processes share the training data (``trainer.devices`` × ``trainer.num_nodes``);
    ``auto`` / -1 stay symbolic (they depend on the machine)."""
    if isinstance(devices, int) and devices > 0:
        per_node = devices
    elif isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, str) and devices.strip().isdigit() and int(devices) > 0:
        per_node = int(devices)
    else:
        return f"{devices}x{num_nodes}"
    return per_node * int(num_nodes or 1)
