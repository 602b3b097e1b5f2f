"""Checks that keep a run from trusting or touching what it should not, made before any work.

- Loading: weights only from safetensors unless ``allow_pickle`` (then ``torch.load`` with
  ``weights_only=True``, transformers' default); no repository code unless ``trust_remote_code``.
  The policy is process-wide because models are loaded deep inside builders that Hydra
  instantiates (pretrained students, scoring filters); threading two flags through every builder
  would tie them all to the config.
- Writing: every output path the config names must resolve inside the run dir or a cache dir.
- Numbers and devices a config can get wrong, named in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from distill.errors import DistillError

log = logging.getLogger(__name__)

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


@dataclass
class LoadPolicy:
    allow_pickle: bool = False
    trust_remote_code: bool = False


POLICY = LoadPolicy()


def set_load_policy(allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    POLICY.allow_pickle, POLICY.trust_remote_code = bool(allow_pickle), bool(trust_remote_code)
    if POLICY.trust_remote_code:
        log.warning("trust_remote_code=true: model and tokenizer directories may run their own Python code")


def pretrained_kwargs() -> dict:
    """Keyword arguments for every ``from_pretrained`` of weights, configs and tokenizers."""
    return {"trust_remote_code": POLICY.trust_remote_code}


def weight_kwargs(path: str | Path, what: str) -> dict:
    """``from_pretrained`` arguments for loading the weights in ``path`` under the policy: safetensors
    only, or pickle files (read with ``weights_only=True``) when ``allow_pickle`` is set."""
    p = Path(path)
    if any(p.glob("*.safetensors")):
        return {"use_safetensors": True, **pretrained_kwargs()}
    pickled = sorted(f.name for pattern in PICKLE_WEIGHTS for f in p.glob(pattern))
    if not pickled:
        raise DistillError(f"{what}: no weights in {p} (expected model.safetensors)")
    if not POLICY.allow_pickle:
        raise DistillError(
            f"{what}: {p} holds only pickle weights ({pickled[0]}); pickle can run code, so they "
            "load only with allow_pickle=true (then with torch.load(weights_only=True))"
        )
    return {"use_safetensors": False, "weights_only": True, **pretrained_kwargs()}


def inside(path: str | Path, roots: list[Path]) -> bool:
    p = Path(path).expanduser().resolve()
    return any(p == r or r in p.parents for r in roots)


def check_write_paths(cfg: DictConfig) -> None:
    """Every output location the config can redirect must lie in the run dir or a cache dir, so a
    typo or a hostile override cannot make a run write (or delete stale files) elsewhere."""
    roots = [Path(cfg.paths.output_dir).expanduser().resolve(), Path(cfg.paths.cache_dir).expanduser().resolve()]
    candidates = {"trainer.default_root_dir": cfg.trainer.get("default_root_dir")}
    for name, cb in (cfg.get("callbacks") or {}).items():
        if cb and cb.get("dirpath"):
            candidates[f"callbacks.{name}.dirpath"] = cb.dirpath
    for name, lg in (cfg.get("logger") or {}).items():
        if lg and lg.get("save_dir"):
            candidates[f"logger.{name}.save_dir"] = lg.save_dir
    if cfg.data.get("cache_dir"):
        candidates["data.cache_dir"] = cfg.data.cache_dir
    for key, value in candidates.items():
        if value is not None and not inside(value, roots):
            raise DistillError(
                f"{key}={value} is outside the run dir ({roots[0]}) and the cache dir ({roots[1]}); "
                "point it inside one of them (or move paths.cache_dir)"
            )


def check_device(cfg: DictConfig) -> None:
    """A GPU requested on a machine without one: say so before any data or model work."""
    accel = str(cfg.trainer.get("accelerator", "auto"))
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise DistillError(f"trainer.accelerator={accel} but no CUDA GPU is available here; use trainer=cpu")
    devices = cfg.trainer.get("devices", 1)
    if accel in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise DistillError(f"trainer.devices={devices} but only {torch.cuda.device_count()} GPU(s) are visible")


def available_memory(device: str) -> int | None:
    """Free bytes on the training device: CUDA's free memory, or the host's MemAvailable."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory_fits(estimate_bytes: float, device: str, available: int | None = None, force: bool = False) -> None:
    """Refuse, with the estimate, a run whose estimated peak exceeds what the device has free."""
    available = available if available is not None else available_memory(device)
    if available is None or estimate_bytes <= available:
        return
    msg = (
        f"the run needs about {estimate_bytes / 2**30:.2f} GiB on {device} (estimate above) but "
        f"{available / 2**30:.2f} GiB is free"
    )
    if force:
        log.warning("%s; memory.force=true: starting anyway", msg)
        return
    raise DistillError(
        f"{msg}: lower data.batch_size or data.seq_len, load the teacher in 8bit/4bit, or set memory.force=true"
    )
