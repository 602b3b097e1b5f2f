"""Composing the configs as a run does, without running: for tests of what a config instantiates."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_train(out_dir: Path, *overrides: str):
    """The distill-train config with ``overrides``, its run dir ``out_dir`` (use the ``out_dir`` fixture)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.runtime.output_dir={out_dir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:runtime.output_dir} resolves as in a run
    return cfg
