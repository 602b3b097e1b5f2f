"""What a run was made of: its resolved config, the code (git commit, dirty flag) and the
package versions, written to ``run_info.json`` (by a Hydra callback, for every CLI) and given to
every logger of a training run as hyperparameters.

Secrets are masked (``distill.secrets.redact``) before anything here is written or logged.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from distill.secrets import redact

PACKAGES = (
    "distill",
    "torch",
    "lightning",
    "transformers",
    "tokenizers",
    "datasets",
    "peft",
    "hydra-core",
    "omegaconf",
    "numpy",
    "bitsandbytes",
    "torchao",
    "datatrove",
    "optuna",
    "hydra-optuna-sweeper",
    "hydra-submitit-launcher",
    "wandb",
    "tensorboard",
)
REPO = Path(__file__).resolve().parents[1]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit of the code that ran and whether it had uncommitted changes (None outside a checkout:
    an installed wheel has no repository)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def hydra_job() -> dict[str, Any]:
    """The Hydra job's place in a sweep (multirun: sweep dir and job number), when Hydra runs it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    info = {"mode": str(hc.mode.name) if hc.mode is not None else None, "overrides": list(hc.overrides.task)}
    if info["mode"] == "MULTIRUN":
        info.update(sweep_dir=str(Path(hc.sweep.dir).resolve()), job_num=hc.job.num)
    return info


def run_info(cfg: DictConfig) -> dict[str, Any]:
    info = {
        "git": git_state(),
        "versions": package_versions(),
        "host": platform.node(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "hydra": hydra_job(),
        "config": resolved(cfg),
    }
    return redact(info)


def resolved(cfg: DictConfig) -> dict:
    """The config with interpolations resolved; as written where one cannot be resolved outside its
    Hydra job (a record of the run must never stop the run)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - any resolver error
        return OmegaConf.to_container(cfg, resolve=False)


def write_run_info(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from distill.cache import write_atomic

    info = run_info(cfg)
    write_atomic(Path(out) / "run_info.json", json.dumps(info, indent=2, default=str) + "\n")
    return info


def flat_hparams(info: dict[str, Any]) -> dict[str, Any]:
    """``run_info`` flattened to ``a/b/c`` keys of scalars: what every logger accepts."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            flat[prefix] = json.dumps(value, default=str)
        else:
            flat[prefix] = value

    walk("", {k: v for k, v in info.items() if k != "argv"})
    return flat


def log_run_info(loggers: list, info: dict[str, Any]) -> None:
    hparams = flat_hparams(info)
    for logger in loggers:
        logger.log_hyperparams(hparams)


class RecordRunInfo(HydraCallback):
    """Hydra callback: ``run_info.json`` in the run dir of every job of every distill CLI (train,
    cache, prune, filter, eval), written before the task starts."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        write_run_info(task, Path(config.hydra.runtime.output_dir))
