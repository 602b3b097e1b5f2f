"""Every student preset through the CLI: the exported student has the preset's structure, and the
objective's terms took part in training. Also distill-prune, LoRA adapters and fixed sparsity.

The smoke teacher has 2 layers (hidden 64), so "half the layers" is 1 layer."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import run_cli
from tests.run_outputs import assert_terms_active, exported_config, exported_weights, logged, read_metrics

pytestmark = pytest.mark.cli

# every step logged (smoke logs every 5th): the CSV logger then shows each term of the 4 steps
SMOKE = [
    "experiment=smoke",
    "control=false",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.log_every_n_steps=1",
]
# the default objective (forward KL + CE) trains every preset here
TERMS = ("forward_kl", "ce")


def distill(args: list[str], cache_dir, out) -> dict:
    """A short smoke distillation with ``args``; its metrics."""
    proc = run_cli([*SMOKE, *args, f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_metrics(out)


def teacher_dir(metrics: dict) -> Path:
    """The teacher the run distilled from (the smoke teacher, trained once into the test cache)."""
    return Path(metrics["teacher.path"])


def decoder_linears(weights: dict) -> dict:
    """The 2-D weights inside the decoder blocks (what pruning by sparsity and LoRA act on)."""
    return {k: w for k, w in weights.items() if ".layers." in k and k.endswith("_proj.weight") and w.dim() == 2}


def test_distill_prune_writes_student_and_report(cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", "student=depth", f"hydra.run.dir={tmp_path}"], cache_dir, prog="distill-prune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["method"] == "depth" and len(report["importance"]) == 2 and len(report["kept_layers"]) == 1
    assert report["student.params"] < report["teacher.params"] and report["student.val_ppl_pruned"] > 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert model.config.num_hidden_layers == 1
    assert sum(p.numel() for p in model.parameters()) == report["student.params"]


def test_distill_prune_refuses_students_not_made_from_the_teacher(cache_dir, tmp_path):
    proc = run_cli(
        ["experiment=smoke", "student=scratch", f"hydra.run.dir={tmp_path}"], cache_dir, prog="distill-prune"
    )
    assert proc.returncode != 0 and "distill-prune" in proc.stderr.strip().splitlines()[-1]


def test_every_other_layer_is_the_smoke_student(smoke_run):
    """The default preset (the smoke run's student): half the teacher's blocks, every other dimension kept."""
    metrics = read_metrics(smoke_run)
    student, teacher = exported_config(smoke_run / "student"), exported_config(teacher_dir(metrics))
    assert teacher["num_hidden_layers"] == 2 and student["num_hidden_layers"] == 1
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert student[key] == teacher[key], key
    assert_terms_active(smoke_run, *TERMS)


def test_two_four_sparsity_survives_distillation_and_export(cache_dir, tmp_path):
    distill(["student=wanda", "student.sparsity=2:4"], cache_dir, tmp_path)
    linears = decoder_linears(exported_weights(tmp_path / "student"))
    assert len(linears) == 2 * 7  # q k v o, gate up down of both blocks (base: null sparsifies the whole teacher)
    for name, w in linears.items():
        groups = w.reshape(w.shape[0], -1, 4)
        assert ((groups != 0).sum(-1) <= 2).all(), name  # every group of 4 inputs keeps at most 2 weights
    assert json.loads((tmp_path / "pruning_report.json").read_text())["method"] == "wanda"
    assert_terms_active(tmp_path, *TERMS)


def test_lora_on_listed_layers_trains_adapters_and_exports_merged(cache_dir, tmp_path):
    """student=layers keeps the listed block (here the teacher's last); LoRA trains only adapters, merged on export."""
    metrics = distill(["student=layers", "student.layers=[-1]", "student.lora.r=4"], cache_dir, tmp_path)
    student = exported_weights(tmp_path / "student")
    teacher = exported_weights(teacher_dir(metrics))
    assert exported_config(tmp_path / "student")["num_hidden_layers"] == 1
    assert not any("lora" in k for k in student)  # merged: a plain HF checkpoint
    # Frozen under LoRA, so still the teacher's: block 0 of the student is the teacher's block 1.
    norm = "model.layers.{}.input_layernorm.weight"
    assert not torch.equal(teacher[norm.format(0)], teacher[norm.format(1)])  # the two blocks can be told apart
    assert torch.equal(student[norm.format(0)], teacher[norm.format(1)])
    assert torch.equal(student["model.embed_tokens.weight"], teacher["model.embed_tokens.weight"])
    # the adapters trained and were merged in: the adapted linears moved, by a low-rank update
    proj = "model.layers.{}.self_attn.q_proj.weight"
    delta = student[proj.format(0)] - teacher[proj.format(1)]
    assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= 4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    assert_terms_active(tmp_path, *TERMS)


@pytest.mark.slow
def test_depth_keeps_the_most_important_half(cache_dir, tmp_path):
    metrics = distill(["student=depth"], cache_dir, tmp_path)
    student, teacher = exported_config(tmp_path / "student"), exported_config(teacher_dir(metrics))
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert student["num_hidden_layers"] == len(report["kept_layers"]) == teacher["num_hidden_layers"] // 2
    assert student["hidden_size"] == teacher["hidden_size"]
    assert_terms_active(tmp_path, *TERMS)


@pytest.mark.slow
def test_width_narrows_the_blocks_and_keeps_the_depth(cache_dir, tmp_path):
    metrics = distill(["student=width"], cache_dir, tmp_path)
    student, teacher = exported_config(tmp_path / "student"), exported_config(teacher_dir(metrics))
    assert student["num_hidden_layers"] == teacher["num_hidden_layers"]
    widths = ("hidden_size", "intermediate_size")
    assert all(student[k] <= teacher[k] for k in widths) and any(student[k] < teacher[k] for k in widths)
    # the preset's default size: 0.55 of the teacher's parameters (whole channels, so not exactly)
    assert metrics["student.params_ratio"] == pytest.approx(0.55, abs=0.1)
    assert_terms_active(tmp_path, *TERMS)


@pytest.mark.slow
def test_magnitude_zeroes_half_of_every_row(cache_dir, tmp_path):
    distill(["student=magnitude"], cache_dir, tmp_path)
    linears = decoder_linears(exported_weights(tmp_path / "student"))
    assert linears
    for name, w in linears.items():
        assert ((w == 0).sum(1) >= w.shape[1] // 2).all(), name  # sparsity 0.5 per output row, kept after training
    assert json.loads((tmp_path / "pruning_report.json").read_text())["method"] == "magnitude"
    assert_terms_active(tmp_path, *TERMS)


@pytest.mark.slow
def test_moe_upcycle_has_experts_and_trains_its_router(cache_dir, tmp_path):
    metrics = distill(["student=moe_upcycle"], cache_dir, tmp_path)
    student, teacher = exported_config(tmp_path / "student"), exported_config(teacher_dir(metrics))
    assert student["num_local_experts"] == 4 and student["num_experts_per_tok"] == 2
    assert student["num_hidden_layers"] == teacher["num_hidden_layers"] // 2  # base: every_other_layer
    weights = exported_weights(tmp_path / "student")
    assert any("experts" in k for k in weights) and any(".gate." in k or "router" in k for k in weights), list(weights)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert sum(p.numel() for p in model.parameters()) == metrics["student.params"]
    assert_terms_active(tmp_path, *TERMS, "router_aux")  # the load-balancing loss keeps every expert in use


@pytest.mark.slow
def test_scratch_is_the_configured_architecture_and_learns(cache_dir, tmp_path):
    metrics = distill(["student=scratch"], cache_dir, tmp_path)
    student = exported_config(tmp_path / "student")
    # the preset's defaults (configs/student/scratch.yaml), not the teacher's shape
    assert (student["model_type"], student["hidden_size"], student["num_hidden_layers"]) == ("llama", 256, 4)
    # a random init starts near uniform over the vocabulary; even 4 steps move it
    assert metrics["student.val_ppl_start"] > 0.5 * student["vocab_size"]
    assert metrics["student.val_ppl"] < metrics["student.val_ppl_start"]
    assert_terms_active(tmp_path, *TERMS)


@pytest.mark.slow
def test_pretrained_student_with_adalora_starts_from_the_given_weights(smoke_run, cache_dir, tmp_path):
    """student=pretrained on the smoke run's export: it starts where that student ended (same weights,
    same validation data), AdaLoRA adapters leave it unchanged at init and are merged on export."""
    smoke = read_metrics(smoke_run)
    metrics = distill(
        [
            "student=pretrained",
            f"student.path={smoke_run / 'student'}",
            "student.lora.r=4",
            "student.lora.type=adalora",
        ],
        cache_dir,
        tmp_path,
    )
    assert metrics["student.val_ppl_start"] == pytest.approx(smoke["student.val_ppl"], rel=1e-3)
    assert exported_config(tmp_path / "student") == exported_config(smoke_run / "student")
    assert not any("lora" in k for k in exported_weights(tmp_path / "student"))
    assert_terms_active(tmp_path, *TERMS)
    budget = logged(tmp_path)["train/adalora_rank"]  # AdaLoRA's own work: it reallocates (prunes) the ranks
    assert len(budget) == 4 and budget[-1] < budget[0], budget
