"""OmegaConf resolvers the configs use."""

from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_precision(accelerator: str = "auto") -> str:
    """bf16 autocast where the hardware runs it natively (CPU included), else fp32."""
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if _cpu_has_bf16() else "32-true"


def wandb_offline() -> bool:
    """wandb logs offline unless a key is configured (env var or ``wandb login``)."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return True  # an explicit offline mode wins over a configured key
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return False
    netrc = os.path.expanduser("~/.netrc")
    return not (os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read())


def sweep_group() -> str | None:
    """The W&B group of a run: its sweep (``<task>/<sweep dir name>``) under multirun, else none."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep = os.path.abspath(HydraConfig.get().sweep.dir)
    return f"{os.path.basename(os.path.dirname(sweep))}/{os.path.basename(sweep)}"


def required(what: str, _node_=None) -> str:
    """``path: ${required:'the Llama-3.1-8B directory'}``: a value an experiment needs from the command line.
    (``???`` cannot say it there: a later config's ``???`` leaves the value a group gave the key in place.)"""
    from distill.errors import DistillError

    key = _node_._get_full_key(None) if _node_ is not None else "this setting"
    raise DistillError(f"{key} is required by this experiment ({what}): give it on the command line, {key}=...")


def register() -> None:
    OmegaConf.register_new_resolver("required", required, replace=True)
    OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
    OmegaConf.register_new_resolver("auto_precision", auto_precision, replace=True)
    OmegaConf.register_new_resolver("wandb_offline", wandb_offline, replace=True)
