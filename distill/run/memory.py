"""The run's config read for the memory model (``distill.quant.memory.Setup``): the one place where a
command line becomes the facts its memory depends on, for the fit check before launch and for
``plan=true`` alike."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from distill.errors import DistillError
from distill.quant.memory import Setup
from distill.ranks import data_parallel_size


def strategy_kind(trainer_cfg) -> str:
    """single | ddp | fsdp | deepspeed, from ``trainer.strategy`` (a name or a ``_target_`` preset)."""
    spec = trainer_cfg.get("strategy", "auto")
    if hasattr(spec, "get"):
        target = str(spec.get("_target_", "")).lower()
        name = "fsdp" if "fsdp" in target else "deepspeed" if "deepspeed" in target else "ddp"
    else:
        name = str(spec or "auto").lower()
    for kind in ("fsdp", "deepspeed", "ddp"):
        if name.startswith(kind):
            return kind
    return "single"  # auto / single_device: Lightning picks DDP itself for several devices (below)


def world_size(trainer_cfg, strict: bool = False) -> int:
    """Processes sharing the data. ``devices: auto / -1`` count this machine's GPUs when it has any; for a
    plan of another machine (``strict``) they must be given as a number."""
    size = data_parallel_size(trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1))
    if isinstance(size, int):
        return size
    if strict:
        raise DistillError(
            f"plan=true needs the number of devices: trainer.devices={trainer_cfg.get('devices')} depends on the "
            "machine the run starts on (give trainer.devices=8)"
        )
    return max(torch.cuda.device_count(), 1) * int(trainer_cfg.get("num_nodes", 1) or 1)


def quant_name(quant_cfg, plugin=None) -> str:
    """The plugin's name, or for a plan (no plugin built) the kind its ``_target_`` names."""
    if plugin is not None:
        return plugin.name
    target = str((quant_cfg or {}).get("_target_", "")).lower()
    if "qlora" in target:
        return "qlora"
    return "qat" if "qat" in target else "none"


def memory_setup(
    cfg: DictConfig,
    vocab_size: int,
    *,
    batch_size: int | None = None,
    seq_len: int | None = None,
    plugin=None,
    loss=None,
    for_plan: bool = False,
) -> Setup:
    """The ``Setup`` of this run: the data loader's micro-batch and sequence length (the config's when not
    given), the trainer's precision, strategy and processes, the teacher's kind and load precision, the
    loss's chunking, the quantization plugin."""
    trainer = cfg.trainer
    strategy = strategy_kind(trainer)
    size = world_size(trainer, strict=for_plan)
    if strategy == "single" and size > 1:
        strategy = "ddp"  # what Lightning's "auto" strategy runs on several devices
    spec = trainer.get("strategy")
    shard_teacher = bool(spec.get("shard_teacher", False)) if hasattr(spec, "get") else False
    loss_cfg = cfg.get("loss") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    if for_plan:  # a plan is for the machine the command line names: a GPU one unless it says cpu
        device = "cpu" if accelerator == "cpu" else "cuda"
    else:
        device = (
            "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
        )
    precision = str(trainer.get("precision") or "32-true")
    raw = OmegaConf.to_container(trainer, resolve=False).get("precision")
    if for_plan and device == "cuda" and "auto_precision" in str(raw):
        precision = "bf16-mixed"  # auto: what a GPU with bf16 (A100, H100) gets, not what this host resolves to
    teacher = cfg.teacher
    return Setup(
        batch_size=int(batch_size if batch_size is not None else cfg.data.batch_size),
        seq_len=int(seq_len if seq_len is not None else cfg.data.seq_len),
        vocab_size=int(vocab_size),
        precision=precision,
        quant=quant_name(cfg.get("quant"), plugin),
        teacher_kind=str(teacher.get("backend", "live")),
        teacher_load_in=teacher.get("load_in"),
        top_k=int(teacher.get("read_top_k") or teacher.get("top_k") or 64),
        strategy=strategy,
        world_size=size,
        shard_teacher=shard_teacher,
        chunk_size=int(getattr(loss, "chunk_size", None) or loss_cfg.get("chunk_size", 256)),
        fused_linear=bool(getattr(loss, "fused_linear", None) or loss_cfg.get("fused_linear", False)),
        device=device,
    )
