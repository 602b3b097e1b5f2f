"""``distill-train ... plan=true``: what the run would hold and take, printed before anything is loaded.

The teacher is built from its ``config.json`` alone (or the from-scratch teacher's config) on the meta
device, the student by its own builder from that weightless teacher (``distill.student.support``), LoRA
applied as the run applies it; then the memory model the run's fit check uses (``distill.quant.memory``)
for the strategy and devices the command line names, the largest micro-batch that fits a device of
``planning.device_memory_gib``, and the FLOPs per token with the time a token budget takes at
``planning.mfu`` of ``planning.peak_tflops`` (``distill.eval.flops``). Nothing is loaded, no data is built,
nothing is trained; the run dir gets ``plan.json`` (the numbers printed) and no checkpoints.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from distill.cache import write_atomic
from distill.config import validate
from distill.errors import DistillError
from distill.eval.flops import distillation_flops_per_token, training_time
from distill.quant.config import check_load_in
from distill.quant.memory import estimate_memory, largest_micro_batch
from distill.run.checks import check_combination, teacher_kind
from distill.run.memory import memory_setup, strategy_kind
from distill.run.plan_lines import plan_lines
from distill.run.student import STUDENTS_FROM_TEACHER, student_spec
from distill.run.teachers import with_more_teachers
from distill.run.teachers_config import member_config, place_teachers, several
from distill.safety import pretrained_kwargs, set_load_policy
from distill.student.lora import apply_lora
from distill.student.prune import every_other_layer
from distill.teacher.load import check_context, check_model_dir

log = logging.getLogger(__name__)

GiB = 2**30


def plan_run(cfg: DictConfig) -> float:
    """Print the plan of the run ``cfg`` describes and write ``plan.json``; returns NaN (nothing trained)."""
    plan = make_plan(cfg)
    log.info("\n".join(plan_lines(plan)))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "plan.json", json.dumps(plan, indent=2, default=str) + "\n")
    return float("nan")


def make_plan(cfg: DictConfig) -> dict:
    """The plan as plain values (what ``plan.json`` holds)."""
    validate(cfg, "train")
    place_teachers(cfg, check_dirs=False)  # teachers=[...]: the first planned as `teacher`, the others added below
    set_load_policy(cfg.get("allow_pickle", False), cfg.get("trust_remote_code", False))
    if cfg.get("task", "causal_lm") != "causal_lm":
        raise DistillError("plan=true plans causal-LM runs (task=causal_lm); this run is task=" + str(cfg.task))
    loss = instantiate(cfg.loss)
    check_plan_combination(cfg, loss)
    teacher = weightless_teacher(cfg)
    vocab = int(teacher.config.vocab_size) if teacher is not None else int(cfg.data.vocab_size)
    student = weightless_student(cfg, teacher, vocab)
    setup = memory_setup(cfg, vocab, loss=loss, for_plan=True)
    live = teacher if setup.teacher_kind == "live" else None
    others = other_teachers(cfg)
    memory = with_more_teachers(estimate_memory(student, live, setup), others, setup)
    planning = cfg.planning
    budget = float(planning.device_memory_gib) * GiB
    flops = distillation_flops_per_token(student, live, setup.seq_len)
    steps_tokens = (
        cfg.trainer.max_steps
        * setup.batch_size
        * setup.seq_len
        * setup.world_size
        * int(cfg.trainer.get("accumulate_grad_batches") or 1)
    )
    tokens = int(planning.tokens) if planning.get("tokens") else int(steps_tokens)
    time = training_time(tokens, flops["total"], setup.world_size, planning.peak_tflops, planning.mfu)
    return {
        "teacher": {
            "kind": setup.teacher_kind,
            "source": cfg.teacher.get("path") or ("from scratch" if teacher is not None else None),
            "params": count(teacher),
            "load_in": cfg.teacher.get("load_in"),
        },
        "student": {
            "builder": builder_name(cfg),
            "params": count(student),
            "trainable": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "config": {
                k: getattr(student.config, k, None) for k in ("hidden_size", "intermediate_size", "num_hidden_layers")
            },
        },
        "setup": asdict(setup),
        "memory": memory,
        "device_memory_bytes": budget,
        "fits": memory["total"] <= budget,
        "largest_micro_batch": largest_micro_batch(
            student, live, setup, budget, adjust=lambda est, at_b: with_more_teachers(est, others, at_b)
        ),
        "flops_per_token": flops,
        "tokens": tokens,
        "tokens_from": "planning.tokens" if planning.get("tokens") else "trainer.max_steps",
        "peak_tflops": float(planning.peak_tflops),
        "mfu": float(planning.mfu),
        "seconds": time["seconds"],
        "device_hours": time["device_hours"],
    }


def other_teachers(cfg: DictConfig) -> list[tuple]:
    """Several teachers: (weightless model, load_in) of each live one after the first."""
    if not several(cfg):
        return []
    members = [(member_config(cfg, i), e) for i, e in enumerate(cfg.teachers) if i > 0 and e.backend == "live"]
    return [(weightless_teacher(member), e.get("load_in")) for member, e in members]


def count(model) -> int | None:
    return None if model is None else sum(p.numel() for p in model.parameters())


def builder_name(cfg: DictConfig) -> str:
    from distill.run.outputs import group_choice

    return group_choice("student", str(cfg.student.get("_target_", "")).rsplit(".", 1)[-1])


def check_plan_combination(cfg: DictConfig, loss) -> None:
    """The run's own checks of settings that cannot work together, except whether the strategy runs on
    this machine: a plan is for the machine the command line names (DeepSpeed needs CUDA to build)."""
    if strategy_kind(cfg.trainer) == "deepspeed":
        check_load_in(cfg.teacher.get("load_in"))
        teacher_kind(cfg)
        return
    check_combination(cfg, loss)


def weightless_teacher(cfg: DictConfig):
    """The teacher on the meta device: from ``teacher.path``'s config.json (the run loads it in fp32), or
    the from-scratch teacher's config; None with ``teacher=none``."""
    if teacher_kind(cfg) == "none":
        return None
    path = cfg.teacher.get("path")
    if path:
        check_model_dir(path)  # a readable config.json: weights and tokenizer are not needed here
        check_context(path, cfg.data.get("seq_len"))
        config = AutoConfig.from_pretrained(str(Path(path).expanduser()), **pretrained_kwargs())
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    from distill.student.scratch import build_llama

    spec = OmegaConf.to_container(cfg.teacher.scratch, resolve=True)
    arch = {k: spec[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")}
    with torch.device("meta"):
        return build_llama(int(cfg.data.vocab_size), max_seq_len=int(cfg.data.seq_len), **arch)


def weightless_student(cfg: DictConfig, teacher, vocab_size: int):
    """The student its builder makes from the weightless teacher, with the run's LoRA adapters."""
    spec, lora = student_spec(cfg)
    target = str(spec.get("_target_", ""))
    if target.startswith(STUDENTS_FROM_TEACHER) and teacher is None:
        raise DistillError(f"student={builder_name(cfg)} is pruned from the teacher, but this run has none")
    if target.startswith("distill.student.sparsity."):
        # the masks need the weights; the student has the shape of its base (its masks are not counted)
        student = every_other_layer(teacher) if spec.get("base") else copy.deepcopy(teacher)
    elif target.startswith("distill.student.pretrained."):
        check_model_dir(spec["path"], "student.path")
        config = AutoConfig.from_pretrained(str(Path(spec["path"]).expanduser()), **pretrained_kwargs())
        with torch.device("meta"):
            student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    elif target.startswith(STUDENTS_FROM_TEACHER):  # a weightless teacher gives a weightless student
        student = instantiate(spec)(teacher=teacher, vocab_size=vocab_size, train_blocks=None)
    else:  # from a config (scratch): built on the meta device
        with torch.device("meta"):
            student = instantiate(spec)(teacher=teacher, vocab_size=vocab_size, train_blocks=None)
    student.requires_grad_(True).train()
    if lora:
        student = apply_lora(student, **lora, total_steps=cfg.trainer.max_steps)
    return student
