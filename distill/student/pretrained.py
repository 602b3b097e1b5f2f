"""A student loaded from a local HF checkpoint. Its tokenizer is the teacher's, or its own: then the
run aligns the two and distills across vocabularies (``distill.run.cross``), which checks both."""

from __future__ import annotations

from transformers import PreTrainedModel

from distill.teacher.load import load_causal_lm


def pretrained_student(
    teacher: PreTrainedModel | None, vocab_size: int, path: str, train_blocks=None
) -> PreTrainedModel:
    return load_causal_lm(path, what="student.path")
