"""A student loaded from a local HF checkpoint; its tokenizer must be the teacher's."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedModel

from distill.errors import DistillError
from distill.safety import pretrained_kwargs
from distill.teacher.load import load_causal_lm


def _vocab(path: str, what: str) -> dict:
    try:
        return AutoTokenizer.from_pretrained(path, **pretrained_kwargs()).get_vocab()
    except Exception as e:
        raise DistillError(f"{what}: cannot load a tokenizer from {path} ({type(e).__name__})") from e


def check_same_vocab(teacher_vocab: dict, student_path: str) -> None:
    student_vocab = _vocab(student_path, "student.path")
    if student_vocab != teacher_vocab:
        differ = len(set(teacher_vocab.items()) ^ set(student_vocab.items()))
        raise DistillError(
            f"teacher and student vocabularies differ ({len(teacher_vocab)} vs {len(student_vocab)} tokens, "
            f"{differ} entries differ): distillation needs one shared tokenizer"
        )


def pretrained_student(
    teacher: PreTrainedModel | None, vocab_size: int, path: str, train_blocks=None
) -> PreTrainedModel:
    # A live teacher is always loaded from a directory that also holds its tokenizer; without one
    # (teacher=cache/none) the pipeline has already checked the student against the tokenizer.
    if teacher is not None and teacher.name_or_path:
        check_same_vocab(_vocab(teacher.name_or_path, "teacher"), path)
    return load_causal_lm(path, what="student.path")
