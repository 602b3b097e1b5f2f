"""Multi-process training: the FSDP2 strategy, its sharding plan, and rank-safe helpers.

DDP needs nothing here: the teacher is not a registered child of the DistillationModule, so
DDP never sees it (replicated by construction, never in the gradient all-reduce).

FSDP2 (``torch.distributed.fsdp.fully_shard``) runs through Lightning's ``ModelParallelStrategy``
and the module's ``configure_model`` hook: Lightning's ``fsdp`` strategy is FSDP1 and refuses
CPU, FSDP1's flat parameters are also what breaks frozen-beside-trainable setups (Lightning
#17319, accelerate #1305); FSDP2 shards per parameter and runs on CPU (gloo) as on GPUs.

The frozen teacher is either replicated (default: each rank holds it whole, as under DDP) or
sharded with its own ``fully_shard`` (``trainer.strategy.shard_teacher=true``). A sharded
teacher still never gathers gradients: its parameters have ``requires_grad=False``, it is
outside ``parameters()`` of the LightningModule (so outside the optimizer and checkpoints), and
its forward runs under ``no_grad``, so no autograd graph reaches it and FSDP's post-backward
reduce-scatter hooks never fire for it. Its forward only all-gathers the weights and frees them.

FSDP2 changes modules in place (their parameters become DTensor shards). What the run evaluates
and exports afterwards must be a plain model with full weights: before sharding we keep a
weightless clone (parameters on the meta device) and :func:`unsharded` fills it from the
gathered full state dict. Nothing in torch or Lightning undoes ``fully_shard``, hence this.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from distill.cache import write_atomic
from distill.errors import DistillError

log = logging.getLogger(__name__)

# sharded module -> weightless plain clone taken before sharding (see unsharded)
_TEMPLATES: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


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
        raise DistillError("trainer=deepspeed needs the 'deepspeed' package, which is not installed "
                           "(pip install 'distill[deepspeed]')")
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise DistillError("trainer=deepspeed runs on CUDA GPUs only (Lightning's DeepSpeedStrategy) and "
                           "none is available: on CPU use trainer=ddp or trainer=fsdp")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(**kwargs)


# bitsandbytes keeps packed weights and their quantization state on its own Parameter subclasses,
# which fully_shard replaces by plain DTensor shards (measured: "'Parameter' object has no attribute 'quant_state'")
PACKED_PARAMS = ("Params4bit", "Int8Params")
FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")
PACKED_UNDER_FSDP = "{what} (bitsandbytes-packed weights) cannot be sharded by trainer=fsdp: {fix}"
FUSED_UNDER_FSDP = ("loss.fused_linear does not work under trainer=fsdp (it reads the sharded LM head outside the "
                    "forward): set loss.fused_linear=false or use trainer=ddp")


def check_strategy(trainer_cfg, loss, quant=None, teacher_load_in=None) -> None:
    """Strategy presets that cannot run here, named in one line before any data or model work
    (building a strategy object is cheap; Lightning builds its own from the same config later)."""
    from hydra.utils import instantiate

    spec = trainer_cfg.get("strategy")
    if not hasattr(spec, "get") or "_target_" not in spec:
        return  # a name Lightning resolves itself (auto, ddp, ...)
    strategy = instantiate(spec)  # deepspeed_strategy raises here where it cannot run
    if not isinstance(strategy, FSDP2Strategy):
        return
    precision = str(trainer_cfg.get("precision"))
    if precision not in FSDP_PRECISIONS:  # Lightning's ModelParallelStrategy refuses the others
        raise DistillError(f"trainer=fsdp supports trainer.precision {', '.join(FSDP_PRECISIONS)}, got {precision!r}: "
                           "set trainer.precision=32-true (GPUs without bf16) or use trainer=ddp")
    if getattr(loss, "fused_linear", False):
        raise DistillError(FUSED_UNDER_FSDP)
    if "qlora" in str((quant or {}).get("_target_", "")).lower():
        raise DistillError(PACKED_UNDER_FSDP.format(what="quant=qlora", fix="use trainer=ddp"))
    if strategy.shard_teacher and teacher_load_in in ("8bit", "4bit"):
        raise DistillError(PACKED_UNDER_FSDP.format(what=f"teacher.load_in={teacher_load_in}",
                                                    fix="set trainer.strategy.shard_teacher=false"))


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
                raise DistillError(f"rank 0 never published {final}: on several nodes paths.cache_dir must be "
                                   "on a shared file system")
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


# -- local ranks under a Hydra multirun ---------------------------------------------------------

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
            flags += argv[i:i + 2]
            i += 1
        elif arg.split("=", 1)[0] in _CONFIG_FLAGS:
            flags.append(arg)
        i += 1
    return [*flags, *job_overrides, f'hydra.run.dir="{output_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}",
            "hydra.output_subdir=null"]


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
        log.warning("this Lightning version launches local ranks differently: multirun with several "
                    "local processes is untested with it")
        return

    def command(local_rank: int):
        import sys

        import __main__
        from hydra.utils import get_original_cwd, to_absolute_path

        hydra_cfg = HydraConfig.get()
        spec = getattr(__main__, "__spec__", None)
        head = [sys.executable, "-m", spec.name] if spec is not None else [sys.executable, to_absolute_path(sys.argv[0])]
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


# -- FSDP2 sharding plan ---------------------------------------------------------------------

def block_classes(model: nn.Module) -> set[str]:
    """Names of the model's transformer-block classes: HF lists them as ``_no_split_modules``
    (the units it never splits across devices), which is the natural FSDP wrapping unit."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard_model(model: nn.Module, mesh, reshard_root: bool | None = None, what: str = "the student",
                fix: str = "use trainer=ddp") -> nn.Module:
    """``fully_shard`` every transformer block, then the rest (embeddings, final norm, head) as the
    root unit. Keeps a weightless plain clone first, for :func:`unsharded`."""
    from torch.distributed.fsdp import fully_shard

    if any(type(p).__name__ in PACKED_PARAMS for p in model.parameters()):
        raise DistillError(PACKED_UNDER_FSDP.format(what=what, fix=fix))

    _TEMPLATES[model] = weightless_clone(model)
    blocks = block_classes(model)
    if not blocks:
        raise DistillError(f"trainer=fsdp: {type(model).__name__} declares no transformer block classes "
                           "(_no_split_modules) to shard by")
    for m in list(model.modules()):
        if m is not model and type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_root)
    return model


def shard_distillation_module(module, mesh, shard_teacher: bool = False) -> None:
    """The FSDP2 plan of a ``DistillationModule`` (called from its ``configure_model``)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(module.student, FSDPModule):
        return  # configure_model runs again on a later fit/validate of the same module
    if module.loss.fused_linear:
        # The fused loss reads the LM head's weight outside the model's forward, where FSDP2 holds
        # only this rank's shard (and would never reduce-scatter its gradient).
        raise DistillError(FUSED_UNDER_FSDP)
    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    shard_model(module.student, dp_mesh)
    if any(p.requires_grad for p in module.loss.parameters()):
        # hidden-state projections train with the student: as a unit of their own their gradients
        # are reduce-scattered like the student's (a plain parameter would drift apart per rank)
        fully_shard(module.loss, mesh=dp_mesh)
    teacher = getattr(module.teacher, "model", None)  # a live teacher's weights (a cache has none)
    if shard_teacher and teacher is not None:
        teacher.requires_grad_(False)
        # reshard the root after forward too: there is never a backward to keep it gathered for
        shard_model(teacher, dp_mesh, reshard_root=True, what="the teacher",
                    fix="set trainer.strategy.shard_teacher=false")
        log.info("FSDP2: teacher sharded over %d ranks (inference only, no gradients)", dp_mesh.size())
    log.info("FSDP2: student sharded over %d ranks (%s)", dp_mesh.size(), ", ".join(sorted(block_classes(module.student))))


def weightless_clone(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters live on the meta device (no memory); buffers are copied, so
    non-persistent ones (rotary frequencies) that no state dict carries stay valid."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def unsharded(model: nn.Module | None) -> nn.Module | None:
    """The plain model with full weights behind an FSDP2-sharded one (the same object when it was
    never sharded). Collective: every rank must call it, in the same order; every rank gets the
    full weights (rank 0 evaluates and exports them)."""
    if model is None or model not in _TEMPLATES:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    template = _TEMPLATES.pop(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    _, unexpected = template.load_state_dict(state, strict=False, assign=True)
    if hasattr(template, "tie_weights"):
        template.tie_weights()  # assign=True replaced tied parameters one by one
    empty = [n for n, p in template.named_parameters() if p.is_meta]
    if unexpected or empty:
        raise RuntimeError(f"gathering the sharded model: no weights for {empty[:3]}, unexpected {unexpected[:3]}")
    return template


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
            write_atomic(out / "replicas.json", json.dumps({"hashes": hashes, "identical": len(set(hashes)) == 1}) + "\n")
        if len(set(hashes)) != 1:
            raise DistillError(f"the ranks ended with different weights ({len(set(hashes))} distinct of {len(hashes)})")
