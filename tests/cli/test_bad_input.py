"""Bad teacher directories and unsafe weights: one clear line and a non-zero exit before training."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.helpers import byo_args, save_random_model
from tests.conftest import run_cli

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def teacher(byo, tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("good") / "teacher", "llama", byo["tok_a"])


def _copy(teacher, tmp_path, name="bad"):
    return shutil.copytree(teacher, tmp_path / name)


def _fails_with(proc, expected: str, out) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines[-1].startswith("distill-train: error:") and expected in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists() and not (out / "checkpoints").exists()


def test_corrupt_config(byo, teacher, cache_dir, tmp_path):
    bad = _copy(teacher, tmp_path)
    (bad / "config.json").write_text("{not json")
    proc = run_cli(byo_args(bad, byo["data"], tmp_path / "run"), cache_dir)
    _fails_with(proc, "cannot read the model config", tmp_path / "run")


def test_corrupt_weights(byo, teacher, cache_dir, tmp_path):
    bad = _copy(teacher, tmp_path)
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:1000])  # truncated
    proc = run_cli(byo_args(bad, byo["data"], tmp_path / "run"), cache_dir)
    _fails_with(proc, "cannot load a causal LM", tmp_path / "run")


def test_missing_tokenizer(byo, teacher, cache_dir, tmp_path):
    bad = _copy(teacher, tmp_path)
    for f in bad.glob("tokenizer*"):
        f.unlink()
    proc = run_cli(byo_args(bad, byo["data"], tmp_path / "run"), cache_dir)
    _fails_with(proc, "no usable tokenizer", tmp_path / "run")


def test_sequence_longer_than_the_teachers_positions(byo, teacher, cache_dir, tmp_path):
    proc = run_cli(byo_args(teacher, byo["data"], tmp_path / "run", "data.seq_len=256"), cache_dir)
    _fails_with(proc, "data.seq_len=256 is longer than teacher.path's maximum positions (128)", tmp_path / "run")


def test_pickle_weights_need_allow_pickle(byo, teacher, cache_dir, tmp_path):
    bad = _copy(teacher, tmp_path, "pickled")
    torch.save(load_file(bad / "model.safetensors"), bad / "pytorch_model.bin")
    (bad / "model.safetensors").unlink()
    proc = run_cli(byo_args(bad, byo["data"], tmp_path / "run"), cache_dir)
    _fails_with(proc, "only pickle weights (pytorch_model.bin)", tmp_path / "run")
    ok = run_cli(byo_args(bad, byo["data"], tmp_path / "run2", "allow_pickle=true"), cache_dir)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "run2" / "metrics.json").read_text())["teacher.val_ppl"] > 0
