"""Validation metrics of a run whose student has its own tokenizer (``distill.data.cross``).

Per-token numbers (perplexity, KL, top-1 agreement at one position) compare models that share a
tokenizer only: the teacher is measured on its own rows, the student and the control on theirs.
What compares across tokenizers is bits per byte on the same text (``distill.eval.bytes``) and the
top-1 agreement on aligned spans of one token each whose two tokens are the same string.
"""

from __future__ import annotations

import contextlib

import torch

from distill.align.vocab import vocab_mapping
from distill.eval.bytes import aligned_top1_agreement
from distill.eval.metrics import evaluate
from distill.sampling import eval_mode


def feed_rows(extras: dict, feed) -> tuple:
    """The rows a teacher reads and their alignment with the student's: the first teacher's
    (``feed="teacher"``), or view ``feed`` (several teachers of other tokenizers, ``distill.data.cross``)."""
    return (extras["teacher_inputs"], extras["aligned"]) if feed == "teacher" else extras["views"][feed]


@torch.no_grad()
def aligned_agreement(
    models: dict, teacher, loader, dm, device, autocast_dtype=None, feed="teacher", teacher_tokenizer=None
) -> dict[str, float]:
    """{name: top-1 agreement with the teacher} over the aligned validation rows of ``loader`` (the
    teacher reading the rows ``feed`` names, in ``teacher_tokenizer``: by default the first teacher's)."""
    teacher_tokenizer = teacher_tokenizer or dm.teacher_tokenizer
    mapping = vocab_mapping(teacher_tokenizer, dm.tokenizer)
    s_vocab, t_vocab = len(dm.tokenizer), len(teacher_tokenizer)
    agree, count = dict.fromkeys(models, 0), 0
    amp = (
        torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    with contextlib.ExitStack() as modes:
        for m in (*models.values(), teacher):
            modes.enter_context(eval_mode(m))  # each model's mode is restored after
        for inputs, _, _, extras in loader:
            t_ids, aligned = feed_rows(extras, feed)
            t_ids, aligned = t_ids.to(device), aligned.to(device)
            with amp:
                t_logits = teacher(input_ids=t_ids, use_cache=False).logits[..., :t_vocab].float()
                for name, model in models.items():
                    s_logits = model(input_ids=inputs.to(device), use_cache=False).logits[..., :s_vocab]
                    hits, n = aligned_top1_agreement(s_logits.float(), t_logits, aligned, mapping)
                    agree[name] += hits
            count += n
    return {name: hits / max(1, count) for name, hits in agree.items()}


def evaluate_across(models: dict, dm, device, autocast_dtype=None) -> dict[str, dict[str, float]]:
    """``evaluate``'s results for every model, each on its own tokenizer's rows, with the students'
    ``top1_agreement`` counted on aligned positions (when the teacher model is among ``models``)."""
    teacher = models.get("teacher")
    students = {name: m for name, m in models.items() if name != "teacher"}
    kwargs = dict(device=device, autocast_dtype=autocast_dtype)
    results = evaluate(students, dm.val_dataloader(), len(dm.tokenizer), **kwargs) if students else {}
    if teacher is not None:
        results |= evaluate({"teacher": teacher}, dm.base.val_dataloader(), len(dm.teacher_tokenizer), **kwargs)
        if students:
            agreement = aligned_agreement(students, teacher, dm.val_dataloader(), dm, device, autocast_dtype)
            for name, value in agreement.items():
                results[name]["top1_agreement"] = value
    return results
