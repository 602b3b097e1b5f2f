"""Load policy, write-path confinement, number/device checks and the memory fit check."""

import pytest
import torch
from omegaconf import OmegaConf

from distill import safety
from distill.errors import DistillError


@pytest.fixture(autouse=True)
def default_policy():
    safety.set_load_policy()
    yield
    safety.set_load_policy()


def test_safetensors_load_without_pickle(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert safety.weight_kwargs(tmp_path, "teacher.path")["use_safetensors"] is True


def test_pickle_weights_need_allow_pickle_then_load_weights_only(tmp_path):
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(DistillError, match="only pickle weights .*allow_pickle=true"):
        safety.weight_kwargs(tmp_path, "teacher.path")
    safety.set_load_policy(allow_pickle=True)
    assert safety.weight_kwargs(tmp_path, "teacher.path") == {
        "use_safetensors": False,
        "weights_only": True,
        "trust_remote_code": False,
    }


def test_no_weights_at_all(tmp_path):
    with pytest.raises(DistillError, match="no weights"):
        safety.weight_kwargs(tmp_path, "teacher.path")


def _cfg(tmp_path, **over):
    base = {
        "paths": {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
        "trainer": {"default_root_dir": str(tmp_path / "run"), "max_steps": 10, "accelerator": "cpu"},
        "callbacks": {"model_checkpoint": {"dirpath": str(tmp_path / "run" / "checkpoints")}},
        "logger": {"csv": {"save_dir": str(tmp_path / "run")}},
        "data": {"cache_dir": str(tmp_path / "cache")},
        "optim": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 0.1, "max_bad_steps": 5},
    }
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.from_dotlist([f"{k}={v}" for k, v in over.items()]))


def test_write_paths_inside_run_and_cache_pass(tmp_path):
    safety.check_write_paths(_cfg(tmp_path))


@pytest.mark.parametrize(
    "key, value",
    [
        ("callbacks.model_checkpoint.dirpath", "/etc/distill"),
        ("logger.csv.save_dir", "{run}/../../elsewhere"),
        ("trainer.default_root_dir", "/"),
    ],
)
def test_write_paths_outside_are_refused(tmp_path, key, value):
    with pytest.raises(DistillError, match=f"{key}=.* is outside the run dir"):
        safety.check_write_paths(_cfg(tmp_path, **{key: value.format(run=tmp_path / "run")}))


def test_gpu_requested_without_one(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DistillError, match="no CUDA GPU is available"):
        safety.check_device(_cfg(tmp_path, **{"trainer.accelerator": "gpu"}))


def test_memory_fit():
    safety.check_memory_fits(1e6, "cpu", available=2e6)
    with pytest.raises(DistillError, match=r"needs about 1.00 GiB on cpu .* 0.50 GiB is free"):
        safety.check_memory_fits(2**30, "cpu", available=2**29)
    safety.check_memory_fits(2**30, "cpu", available=2**29, force=True)  # forced: a warning only
    assert safety.available_memory("cpu") > 0
