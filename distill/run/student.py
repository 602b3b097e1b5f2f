"""The student step: the builder named by ``student=`` (pruned from the teacher, from scratch, or a
pretrained model), optional LoRA adapters, and the plain HF model it becomes after training."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from distill.cache import write_atomic
from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.losses.representation import require_eager_attention
from distill.ranks import is_main_process
from distill.student.lora import merge_lora
from distill.student.sparsity import bake_masks, masked_modules, verify_sparsity

# Builders that cut the student out of the teacher's weights (scratch and pretrained ones do not).
STUDENTS_FROM_TEACHER = (
    "distill.student.prune.",
    "distill.student.depth.",
    "distill.student.width.",
    "distill.student.sparsity.",
    "distill.student.moe.",
)


def student_needs_teacher(cfg: DictConfig) -> bool:
    """Whether ``student=`` is built from the teacher's weights (then the run must load them)."""
    return str(cfg.student.get("_target_", "")).startswith(STUDENTS_FROM_TEACHER)


OWN_TOKENIZER = ("tokenizer", "vocab_size", "tokenizer_style")


def student_spec(cfg: DictConfig) -> tuple[dict, dict | None]:
    """The builder's config, and the LoRA block when adapters are on (``student.lora.r > 0``)."""
    spec = OmegaConf.to_container(cfg.student, resolve=True)
    lora = spec.pop("lora", None)
    for key in OWN_TOKENIZER:  # the student's own tokenizer: the run's (distill.run.cross)
        spec.pop(key, None)
    return spec, (lora if lora and lora.get("r") else None)


def build_student(cfg: DictConfig, teacher_model, vocab_size: int, dm):
    """The student as its builder makes it (pruned, scratch, ...), before any adapters."""
    spec, _ = student_spec(cfg)
    if "max_seq_len" in spec and hasattr(dm, "student_len"):  # its own tokenizer may need longer rows
        spec["max_seq_len"] = max(spec["max_seq_len"], dm.student_len)
    student = instantiate(spec)(teacher=teacher_model, vocab_size=vocab_size, train_blocks=dm.train_blocks)
    student.requires_grad_(True).train()  # builders that copy the (frozen, eval-mode) teacher copy that too
    cross = hasattr(dm, "teacher_tokenizer")  # its own tokenizer: the teacher was checked against its own
    check_vocab(vocab_size, teacher=None if cross else teacher_model, student=student)
    if student.config.eos_token_id is None:  # a student built without a teacher: the tokenizer's EOS
        for c in (student.config, student.generation_config):
            c.eos_token_id = c.bos_token_id = c.pad_token_id = dm.tokenizer.eos_token_id
    return student


def check_vocab(vocab_size: int, **models) -> None:
    """Every model must have an output row for every token; extra padding rows are trimmed."""
    for name, model in models.items():
        if model is None:
            continue
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < vocab_size:
            raise DistillError(
                f"vocabulary mismatch: the {name} predicts {rows} tokens but the tokenizer has {vocab_size}"
            )


def save_pruning_report(student, out: Path) -> None:
    report = getattr(student, "pruning_report", None)
    if report and is_main_process():
        write_atomic(out / "pruning_report.json", json.dumps(report, indent=2, default=str) + "\n")


def finalize_student(student):
    """The plain HF model to evaluate and export: LoRA merged, sparsity masks baked into the
    weights (and the sparsity pattern checked again after training)."""
    student = merge_lora(student)
    report = getattr(student, "pruning_report", None) or {}
    if next(masked_modules(student), None) is not None:
        bake_masks(student)
        verify_sparsity(student, report.get("sparsity"))
    return student


def finalize_quantized(student, plugin):
    """``finalize_student`` with the quantization plugin's own finalize in its place in the order."""
    if plugin is not None and plugin.finalize_before_merge:
        student = plugin.finalize(student)
    student = finalize_student(student)
    if plugin is not None and not plugin.finalize_before_merge:
        student = plugin.finalize(student)
    return student


def use_eager_attention(cfg: DictConfig, loss: Objective, **models) -> None:
    """Attention maps exist only under eager attention: switch to it (``attn_implementation=auto``),
    or refuse a configuration that asks for another implementation."""
    if not loss.needs_attentions:
        return
    wanted = cfg.get("attn_implementation", "auto")
    if wanted not in ("auto", "eager"):
        raise DistillError(f"attention-map distillation needs attn_implementation=eager, got {wanted!r}")
    for name, model in models.items():
        if model is not None:
            model.set_attn_implementation("eager")
            require_eager_attention(model, name)
