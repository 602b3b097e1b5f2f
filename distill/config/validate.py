"""The one entry point: ``validate(cfg, app)``, called once at the start of every CLI run, after Hydra has
composed the config and before any data or model work."""

from __future__ import annotations

from omegaconf import DictConfig

from distill.config.check import check_section
from distill.config.combinations import check_task_objective
from distill.config.plain import plain
from distill.config.schema import APPS


def validate(cfg: DictConfig, app: str) -> None:
    """Check every setting of ``cfg`` (types, ranges, key names) for ``app`` (train, prune, cache, filter,
    eval); raise ``DistillError`` with one line naming the first bad key, its value and what is expected.

    ``hydra`` is left to Hydra, whose own schema types it (and whose callbacks run before the job)."""
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}; one of {', '.join(APPS)}")
    values = plain(cfg, skip=("hydra",))
    check_task_objective(values)
    check_section(values, APPS[app], "")
