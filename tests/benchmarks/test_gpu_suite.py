"""``benchmarks/gpu_suite.py``: its ``--dry`` mode runs every check at toy shapes on the CPU (so the script
cannot rot while no GPU runs it), and a check that breaks is recorded as failed while the suite goes on."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"

# What each check must report on the CPU, positive; every other number it reports must be finite and >= 0.
HEADLINES = {
    "kd_step": ("tokens_per_s", "flops_per_token", "peak_bytes", "plan_bytes", "peak_over_plan"),
    "peak_vs_plan": ("peak_bytes", "plan_bytes", "peak_over_plan", "seconds_per_step"),
    "fused_vs_naive": ("naive_seconds", "fused_seconds", "fused_time_over_naive"),
    "qlora_vs_lora": ("lora_weight_bytes", "qlora_weight_bytes", "weights_ratio", "qlora_tokens_per_s"),
    "teacher_4bit": ("bf16_bytes", "4bit_bytes", "bytes_ratio", "4bit_tokens_per_s", "top1_agreement"),
    "qat_int4": ("plain_tokens_per_s", "qat_tokens_per_s", "qat_step_overhead"),
    "fsdp2_sharded_teacher": ("loss_sharded", "tokens_per_s", "peak_bytes", "gathered_params"),
}
NEEDS = {"qlora_vs_lora": "bitsandbytes", "teacher_4bit": "bitsandbytes", "qat_int4": "torchao"}


@pytest.fixture(scope="module")
def suite():
    """The suite's module, imported as a script is (it puts benchmarks/ and the repository on sys.path)."""
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path[:] = path
    return module


def numbers(result: dict):
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value


def test_a_broken_check_is_recorded_as_failed_and_the_suite_goes_on(suite, tmp_path):
    def broken(ctx):
        raise ValueError("boom\nsecond line")

    def missing(ctx):
        raise suite.Skip("no kernel here", measured_before=1.5)

    def fine(ctx):
        return {"value": 2.0}

    out = tmp_path / "suite.json"
    report = suite.run_suite(True, None, out, checks={"broken": broken, "missing": missing, "fine": fine})
    checks = report["checks"]
    assert checks["broken"]["status"] == "failed" and checks["broken"]["error"] == "ValueError: boom"
    assert checks["missing"]["status"] == "skipped" and checks["missing"]["why"] == "no kernel here"
    assert checks["missing"]["measured_before"] == 1.5
    assert checks["fine"]["status"] == "ok" and checks["fine"]["value"] == 2.0
    assert json.loads(out.read_text())["checks"].keys() == checks.keys()  # written, in order
    assert all(g["met"] is None for g in report["goals"].values())  # none of the goals' checks ran


def test_unknown_check_names_stop_before_anything_runs(suite, tmp_path):
    with pytest.raises(SystemExit, match="unknown check"):
        suite.run_suite(True, ["kd_step", "nope"], tmp_path / "suite.json")
    assert not (tmp_path / "suite.json").exists()


@pytest.mark.cli
def test_dry_run_runs_every_check_on_the_cpu(suite, tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--dry", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry"] is True and report["device"]["name"] == "cpu"
    checks = report["checks"]
    assert list(checks) == list(suite.CHECKS)
    assert not [n for n, c in checks.items() if c["status"] == "failed"], proc.stdout
    for name, keys in HEADLINES.items():
        result = checks[name]
        if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            assert result["status"] == "skipped" and "not installed" in result["why"]
            continue
        assert result["status"] == "ok", (name, result)
        for key in keys:
            assert result[key] > 0, (name, key, result[key])
        for key, value in numbers(result):
            assert math.isfinite(value) and value >= 0, (name, key, value)
    assert checks["fsdp2_sharded_teacher"]["loss_rel_diff"] < 1e-5  # sharding does not change the loss
    sparse = checks["sparse_2_4"]
    assert sparse["status"] == "skipped" and "need CUDA" in sparse["why"]
    assert sparse["student_zero_fraction"] == 0.5 and sparse["dense_generate_tokens_per_s"] > 0  # masks built
    assert set(report["goals"]) == {g[0] for g in suite.GOALS}
