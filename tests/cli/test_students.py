"""Every student preset through the CLI, distill-prune, LoRA adapters and fixed sparsity."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import run_cli

SMOKE = ["experiment=smoke", "control=false", "trainer.max_steps=4", "trainer.val_check_interval=4"]


def test_distill_prune_writes_student_and_report(cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", "student=depth", f"hydra.run.dir={tmp_path}"], cache_dir, prog="distill-prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["method"] == "depth" and len(report["importance"]) == 2 and len(report["kept_layers"]) == 1
    assert report["student.params"] < report["teacher.params"] and report["student.val_ppl_pruned"] > 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert model.config.num_hidden_layers == 1 and sum(p.numel() for p in model.parameters()) == report["student.params"]


def test_distill_prune_refuses_students_not_made_from_the_teacher(cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", "student=scratch", f"hydra.run.dir={tmp_path}"], cache_dir, prog="distill-prune")
    assert proc.returncode != 0 and "distill-prune" in proc.stderr.strip().splitlines()[-1]


def test_two_four_sparsity_survives_distillation_and_export(cache_dir, tmp_path):
    proc = run_cli([*SMOKE, "student=wanda", "student.sparsity=2:4", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(tmp_path / "student" / "model.safetensors")
    w = weights["model.layers.0.mlp.down_proj.weight"]
    groups = w.reshape(w.shape[0], -1, 4)
    assert ((groups != 0).sum(-1) <= 2).all()  # every group of 4 inputs keeps at most 2 weights
    assert json.loads((tmp_path / "pruning_report.json").read_text())["method"] == "wanda"


def test_lora_student_trains_adapters_and_exports_merged(cache_dir, tmp_path):
    proc = run_cli([*SMOKE, "student.lora.r=4", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = load_file(tmp_path / "student" / "model.safetensors").keys()
    assert not any("lora" in k for k in keys)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("student", ["depth", "width", "magnitude", "moe_upcycle", "scratch", "adalora"])
def test_student_preset_distills_end_to_end(student, cache_dir, tmp_path):
    args = ["student.lora.r=4", "student.lora.type=adalora"] if student == "adalora" else [f"student={student}"]
    proc = run_cli([*SMOKE, *args, f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["student.val_ppl"] > 1
    AutoModelForCausalLM.from_pretrained(tmp_path / "student")
