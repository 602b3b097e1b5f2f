"""Where the config tree is, and the names in it: its groups and each group's options (for "did you
mean ...?" when Hydra cannot find one). Read with Hydra's own loader, so the groups Hydra adds itself
(hydra/launcher, hydra/sweeper, ...) are among them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

CONFIG_DIR = os.environ.get("DISTILL_CONFIG_DIR", str(Path(__file__).resolve().parents[2] / "configs"))


def group_options(group: str) -> list[str]:
    """``student`` -> ``["depth", "every_other_layer", ...]``; [] for no such group."""
    return _read(lambda loader: loader.get_group_options(group))


def groups() -> list[str]:
    """Every group, nested ones by path: ``data``, ``data/filters``, ``hydra/launcher``, ..."""

    def walk(loader) -> list[str]:
        found, todo = [], [""]
        while todo:
            parent = todo.pop()
            for name in loader.list_groups(parent):
                path = f"{parent}/{name}" if parent else name
                found.append(path)
                todo.append(path)
        return found

    return _read(walk)


def _read(read: Callable) -> list[str]:
    """``read(config loader)`` over the tree; [] when Hydra cannot load it (the names are only hints)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return list(read(GlobalHydra.instance().config_loader()))
    except Exception:  # noqa: BLE001 - Hydra already holds a config (a test's compose), or the tree is gone
        return []
