"""Compose the shipped config tree as the CLI does (``tests/test_configs.py``) and hand it to validate()."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from distill.cli.resolvers import register

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def compose_app(tmp_path, monkeypatch):
    """``compose_app(app, *overrides)``: the composed config, with ``${hydra:...}`` resolvable as in a run,
    an isolated cache and an offline wandb with no key."""
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    register()

    def _compose(app: str, *overrides: str):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                app, overrides=[f"hydra.runtime.output_dir={tmp_path / 'run'}", *overrides], return_hydra_config=True
            )
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    HydraConfig.instance().cfg = None
