"""``plan=true`` in-process: the plan is the memory model on the weightless models the run would build, for
the strategy and devices the config names; the recipes plan within the hardware they name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distill.errors import DistillError
from distill.eval.flops import distillation_flops_per_token
from distill.quant.memory import Setup, estimate_memory, teacher_bytes
from distill.run.plan import make_plan, weightless_student, weightless_teacher
from distill.run.plan_lines import plan_lines
from tests.compose import compose_train
from tests.student.test_real_shapes import FIXTURES, block_params, closed_form

RECIPES = sorted(
    p.stem for p in (FIXTURES.parents[2] / "configs" / "experiment").glob("*.yaml") if "# Planned for:" in p.read_text()
)
GiB = 2**30


@pytest.fixture
def config_only(tmp_path) -> callable:
    """A model dir holding nothing but a fixture's config.json."""

    def make(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        shutil.copy(FIXTURES / name / "config.json", path / "config.json")
        return path

    return make


def plan_of(out_dir, *overrides):
    return make_plan(compose_train(out_dir, "plan=true", *overrides))


def test_a_dir_with_only_config_json_is_enough(out_dir, config_only):
    teacher = config_only("llama-3.2-1b")
    overrides = (
        f"teacher.path={teacher}",
        "student=depth",
        "student.num_layers=8",
        "trainer=ddp",
        "trainer.devices=8",
        "data.seq_len=2048",
        "data.batch_size=4",
    )
    plan = plan_of(out_dir, *overrides)
    cfg = compose_train(out_dir, *overrides)
    c = weightless_teacher(cfg).config
    assert plan["teacher"]["params"] == closed_form(c)
    assert plan["student"]["params"] == closed_form(c) - 8 * block_params(c)
    setup = Setup(**plan["setup"])
    assert (setup.strategy, setup.world_size, setup.precision, setup.device) == ("ddp", 8, "bf16-mixed", "cuda")
    assert (setup.batch_size, setup.seq_len, setup.vocab_size) == (4, 2048, c.vocab_size)
    # the plan's numbers are the memory model's, on the same weightless models
    teacher_model = weightless_teacher(cfg)
    student = weightless_student(cfg, teacher_model, c.vocab_size)
    assert plan["memory"] == estimate_memory(student, teacher_model, setup)
    largest = plan["largest_micro_batch"]
    fits = [
        estimate_memory(student, teacher_model, Setup(**{**plan["setup"], "batch_size": b}))["total"] <= 80 * GiB
        for b in (largest, largest + 1)
    ]
    assert fits == [True, False]
    flops = distillation_flops_per_token(student, teacher_model, 2048)
    assert plan["flops_per_token"] == flops
    assert plan["tokens"] == cfg.trainer.max_steps * 4 * 2048 * 8
    assert plan["seconds"] == pytest.approx(plan["tokens"] * flops["total"] / (8 * 989e12 * 0.4))
    assert (out_dir / "checkpoints").exists() is False


def test_strategies_and_teachers_change_what_they_should(out_dir):
    base = (f"teacher.path={FIXTURES / 'llama-3.1-8b'}", "student=width", "student.target_params=0.5")
    base += ("data.seq_len=4096", "data.batch_size=1", "trainer.devices=8")
    ddp = plan_of(out_dir, *base, "trainer=ddp")["memory"]
    fsdp = plan_of(out_dir, *base, "trainer=fsdp")["memory"]
    sharded = plan_of(out_dir, *base, "trainer=fsdp", "trainer.strategy.shard_teacher=true")["memory"]
    for part in ("student weights", "optimizer"):
        assert fsdp[part] == pytest.approx(ddp[part] / 8)
    assert fsdp["gradients"] == pytest.approx(ddp["gradients"] / 16)  # DDP holds its buckets too
    assert fsdp["teacher weights"] == ddp["teacher weights"] and sharded["teacher weights"] == pytest.approx(
        ddp["teacher weights"] / 8
    )
    four_bit = plan_of(out_dir, *base, "trainer=ddp", "teacher.load_in=4bit")["memory"]
    assert four_bit["teacher weights"] < ddp["teacher weights"] / 3  # NF4 linears, fp32 embeddings and head
    cached = plan_of(out_dir, *base, "trainer=ddp", "teacher=cache")
    assert cached["memory"]["teacher weights"] == 0 and cached["flops_per_token"]["teacher"] == 0
    assert cached["memory"]["loss buffers"] < ddp["loss buffers"]  # top-k instead of the teacher's logits


def test_qlora_plans_the_base_in_4_bits(out_dir):
    plan = plan_of(
        out_dir,
        f"teacher.path={FIXTURES / 'qwen3-8b'}",
        "teacher.load_in=4bit",
        "student=pretrained",
        f"student.path={FIXTURES / 'qwen3-4b'}",
        "quant=qlora",
        "trainer=gpu",
    )
    s = plan["student"]
    assert s["trainable"] < s["params"] / 100  # the adapters only
    assert plan["memory"]["student weights"] < s["params"] * 1.0  # under a byte per parameter
    assert plan["memory"]["gradients"] == 4 * s["trainable"]


def test_the_budget_and_device_come_from_planning(out_dir):
    base = (f"teacher.path={FIXTURES / 'qwen3-0.6b'}", "student=depth", "trainer=gpu")
    plan = plan_of(out_dir, *base, "planning.tokens=1000000000", "planning.device_memory_gib=1", "planning.mfu=0.5")
    assert plan["tokens"] == 10**9 and plan["tokens_from"] == "planning.tokens"
    assert plan["fits"] is False and plan["largest_micro_batch"] == 0
    assert plan["seconds"] == pytest.approx(1e9 * plan["flops_per_token"]["total"] / (989e12 * 0.5))


def test_the_plan_reads_as_the_run_plan_does(out_dir):
    plan = plan_of(
        out_dir, f"teacher.path={FIXTURES / 'mistral-7b-v0.1'}", "student=depth", "trainer=fsdp", "trainer.devices=4"
    )
    lines = plan_lines(plan)
    text = "\n".join(lines)
    assert lines[0].startswith("plan ")
    for part, value in plan["memory"].items():
        if value and part != "total":
            assert f"    {part}" in text
    assert "peak" in text and "largest micro-batch that fits" in text and "device-hours" in text
    assert "4 × cuda · fsdp" in text and "7.24B params" in text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["teacher.path=/no/such/model"], "teacher.path does not exist"),
        (["trainer.devices=auto"], "plan=true needs the number of devices"),
        (["student=pretrained", "student.path=/no/such/student"], "student.path does not exist"),
        (["teacher=none"], "teacher=none has no teacher to prune the student from"),  # the run's own check
    ],
)
def test_bad_input_is_one_line(out_dir, overrides, message):
    with pytest.raises(DistillError, match=message):
        plan_of(out_dir, f"teacher.path={FIXTURES / 'llama-3.2-1b'}", *overrides)


def test_a_dir_without_config_json_is_refused(out_dir, tmp_path):
    with pytest.raises(DistillError, match="no config.json"):
        plan_of(out_dir, f"teacher.path={tmp_path}")


@pytest.mark.parametrize(
    "override, message",
    [("plan=maybe", "plan"), ("planning.mfu=0", "planning.mfu"), ("planning.mfu=1.5", "planning.mfu")],
)
def test_bad_planning_values_name_their_key(out_dir, override, message):
    with pytest.raises(DistillError, match=message):
        make_plan(compose_train(out_dir, f"teacher.path={FIXTURES / 'llama-3.2-1b'}", "plan=true", override))


RECIPE_PATHS = {
    "minitron_8b_to_4b": [f"teacher.path={FIXTURES / 'llama-3.1-8b'}"],
    "cached_8b_to_1b": [f"teacher.path={FIXTURES / 'llama-3.1-8b'}", f"student.path={FIXTURES / 'llama-3.2-1b'}"],
    "qlora_8b_to_4b": [f"teacher.path={FIXTURES / 'qwen3-8b'}", f"student.path={FIXTURES / 'qwen3-4b'}"],
}


def test_a_recipe_names_the_model_dirs_it_needs(out_dir):
    with pytest.raises(DistillError, match=r"^teacher.path is required by this experiment \(the Llama-3.1-8B"):
        make_plan(compose_train(out_dir, "experiment=minitron_8b_to_4b", "plan=true"))


def test_every_recipe_is_planned_here():
    assert RECIPES == sorted(RECIPE_PATHS)


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_plans_within_the_hardware_it_names(name, out_dir):
    """Composed with the fixtures' config.json as its model dirs, the recipe fits the device it was planned
    for at its micro-batch, and its header gives the plan command."""
    header = (FIXTURES.parents[2] / "configs" / "experiment" / f"{name}.yaml").read_text()
    assert f"distill-train experiment={name}" in header and "plan=true" in header
    cfg = compose_train(out_dir, f"experiment={name}", "plan=true", *RECIPE_PATHS[name])
    assert OmegaConf.select(cfg, "teacher.path")
    plan = make_plan(cfg)
    assert plan["fits"], plan["memory"]
    assert plan["largest_micro_batch"] >= cfg.data.batch_size
    assert plan["setup"]["world_size"] == (8 if name != "qlora_8b_to_4b" else 1)


def test_several_teachers_count_in_the_peak_and_in_the_largest_micro_batch(out_dir):
    """A second live teacher adds its weights and its logits to every micro-batch the plan tries."""
    one, two = FIXTURES / "llama-3.2-1b", FIXTURES / "llama-3.1-8b"  # one vocabulary (128,256)
    base = (f"teacher.path={one}", "student=depth", "student.num_layers=8", "trainer=gpu", "data.seq_len=2048")
    single = plan_of(out_dir, *base)
    several = plan_of(out_dir, *base, f"teachers=[{{path: {one}, weight: 1}}, {{path: {two}, weight: 1}}]")
    cfg = compose_train(out_dir, *base)
    eight_b = weightless_teacher(compose_train(out_dir, f"teacher.path={two}"))
    eight_b_bytes = teacher_bytes(eight_b, None)
    assert several["memory"]["teacher weights"] == pytest.approx(single["memory"]["teacher weights"] + eight_b_bytes)
    largest = several["largest_micro_batch"]
    assert 0 < largest < single["largest_micro_batch"]
    teacher = weightless_teacher(cfg)
    student = weightless_student(cfg, teacher, 128256)

    def total(b: int) -> float:  # the plan's own sum, redone by hand: the 8B's weights + fp32 logits twice
        setup = Setup(**{**several["setup"], "batch_size": b})
        est = estimate_memory(student, teacher, setup)
        logits = 8.0 * b * 2048 * 128256
        transient = max(est["activations"] + est["loss buffers"] + logits, est["optimizer step"])
        held = est["student weights"] + est["teacher weights"] + eight_b_bytes + est["optimizer"] + est["fsdp gathered"]
        return held + est["gradients"] + transient

    assert [total(b) <= 80 * GiB for b in (largest, largest + 1)] == [True, False]
