"""Multi-process training strategies: the FSDP2 and DeepSpeed presets, the checks that name a preset
which cannot run here, and a check that the ranks ended with the same weights.

DDP needs nothing here: the teacher is not a registered child of the DistillationModule, so
DDP never sees it (replicated by construction, never in the gradient all-reduce).

FSDP2 (``torch.distributed.fsdp.fully_shard``) runs through Lightning's ``ModelParallelStrategy``
and the module's ``configure_model`` hook: Lightning's ``fsdp`` strategy is FSDP1 and refuses
CPU, FSDP1's flat parameters are also what breaks frozen-beside-trainable setups (Lightning
#17319, accelerate #1305); FSDP2 shards per parameter and runs on CPU (gloo) as on GPUs. What is
sharded, and how a run gets the plain model back, is the sharding plan (``distill/sharding.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from distill.cache import write_atomic
from distill.errors import DistillError
from distill.sharding import FUSED_UNDER_FSDP, PACKED_UNDER_FSDP


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as pure data parallelism (every process one FSDP rank), plus
    whether the frozen teacher is sharded too.

    The parent's ``auto`` sizes make each node's processes one tensor-parallel group, which
    ``fully_shard`` alone never uses; here ``auto`` means data-parallel over all processes."""

    def __init__(self, shard_teacher: bool = False, save_distributed_checkpoint: bool = True, **kwargs):
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.shard_teacher = shard_teacher

    def setup_environment(self) -> None:
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def deepspeed_strategy(accelerator: str = "auto", **kwargs):
    """Lightning's ``DeepSpeedStrategy``, or one clear line when it cannot run here. The teacher
    is outside the engine's parameters (not a registered child), so ZeRO never partitions it or
    gives it optimizer state: it is replicated on every rank."""
    if importlib.util.find_spec("deepspeed") is None:
        raise DistillError(
            "trainer=deepspeed needs the 'deepspeed' package, which is not installed (pip install 'distill[deepspeed]')"
        )
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise DistillError(
            "trainer=deepspeed runs on CUDA GPUs only (Lightning's DeepSpeedStrategy) and "
            "none is available: on CPU use trainer=ddp or trainer=fsdp"
        )
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(**kwargs)


FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")


def strategy_that_runs_here(trainer_cfg):
    """The configured strategy object, or one line saying why it cannot run on this machine (building
    one is cheap; Lightning builds its own from the same config later). None for a plain name."""
    from hydra.utils import instantiate

    spec = trainer_cfg.get("strategy")
    if not hasattr(spec, "get") or "_target_" not in spec:
        return None  # a name Lightning resolves itself (auto, ddp, ...)
    return instantiate(spec)  # deepspeed_strategy raises here where it cannot run


def check_strategy(trainer_cfg, loss, quant=None, teacher_load_in=None) -> None:
    """Strategy presets that cannot run with this objective or quantization, named in one line before
    any data or model work."""
    strategy = strategy_that_runs_here(trainer_cfg)
    if not isinstance(strategy, FSDP2Strategy):
        return
    precision = str(trainer_cfg.get("precision"))
    if precision not in FSDP_PRECISIONS:  # Lightning's ModelParallelStrategy refuses the others
        raise DistillError(
            f"trainer=fsdp supports trainer.precision {', '.join(FSDP_PRECISIONS)}, got {precision!r}: "
            "set trainer.precision=32-true (GPUs without bf16) or use trainer=ddp"
        )
    if getattr(loss, "fused_linear", False):
        raise DistillError(FUSED_UNDER_FSDP)
    if "qlora" in str((quant or {}).get("_target_", "")).lower():
        raise DistillError(PACKED_UNDER_FSDP.format(what="quant=qlora", fix="use trainer=ddp"))
    if strategy.shard_teacher and teacher_load_in in ("8bit", "4bit"):
        raise DistillError(
            PACKED_UNDER_FSDP.format(
                what=f"teacher.load_in={teacher_load_in}", fix="set trainer.strategy.shard_teacher=false"
            )
        )


# -- replica check ----------------------------------------------------------------------------


def state_hash(module: nn.Module) -> str:
    """sha256 of a module's full state (names and bytes). DTensor shards are gathered first, which
    is collective: every rank must call it."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ReplicaCheck(L.Callback):
    """After training, every rank hashes the trained state (student and the objective's own
    parameters); rank 0 writes them to ``<dirpath>/replicas.json`` and the run stops with one line
    if the replicas differ (a parameter that escaped gradient sync). Under DDP every rank holds a
    whole copy, so this compares the copies; under FSDP2 one copy of each shard exists and is
    gathered first, so it checks what stays replicated (buffers, any parameter left unsharded) and
    that every rank would export the same weights. Enable with
    ``+callbacks.replica_check._target_=distill.strategies.ReplicaCheck``."""

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        digest = state_hash(pl_module)
        hashes = [digest]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            hashes = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(hashes, digest)
        if trainer.is_global_zero:
            out = Path(self.dirpath or trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(
                out / "replicas.json", json.dumps({"hashes": hashes, "identical": len(set(hashes)) == 1}) + "\n"
            )
        if len(set(hashes)) != 1:
            raise DistillError(f"the ranks ended with different weights ({len(set(hashes))} distinct of {len(hashes)})")
