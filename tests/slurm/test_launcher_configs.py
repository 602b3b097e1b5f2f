"""``hydra/launcher=slurm|local`` compose into what submitit needs, and ``configs/local/`` (the
git-ignored cluster specifics) overrides them. No cluster needed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import OmegaConf

from distill.cli.resolvers import register

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def launcher(config_dir: Path, *overrides: str) -> dict:
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    node = cfg.hydra.launcher
    params = OmegaConf.to_container(node, resolve=False)
    # resolve only what does not need a running Hydra job (sweep dir, job name)
    for key in ("tasks_per_node", "nodes"):
        params[key] = OmegaConf.select(cfg, f"hydra.launcher.{key}")
    return params


def test_slurm_launcher_has_one_task_per_device_and_requeues():
    params = launcher(CONFIG_DIR, "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4")
    assert params["_target_"].endswith("SlurmLauncher") and get_class(params["_target_"])
    assert params["tasks_per_node"] == 4 and params["nodes"] == 1
    assert params["additional_parameters"]["requeue"] is True
    assert params["signal_delay_s"] >= 60  # room for a step and a checkpoint before the limit


def test_local_launcher_is_submitit_local():
    params = launcher(CONFIG_DIR, "hydra/launcher=local")
    assert params["_target_"].endswith("LocalLauncher") and get_class(params["_target_"])


def test_configs_local_sets_cluster_specifics(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    example = (configs / "local" / "example.yaml.template").read_text()
    (configs / "local" / "default.yaml").write_text(example)
    params = launcher(configs, "hydra/launcher=slurm")
    assert params["partition"] == "gpu" and params["account"] == "my_account"
    if not (CONFIG_DIR / "local" / "default.yaml").exists():  # a checkout without cluster specifics
        assert launcher(CONFIG_DIR, "hydra/launcher=slurm")["partition"] is None


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
