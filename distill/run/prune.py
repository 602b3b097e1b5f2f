"""The body of ``distill-prune``: the student straight out of its builder, measured and saved.

Writes ``student/`` (Hugging Face format with the tokenizer; sparsity masks baked into
the weights) and ``pruning_report.json``: what the method removed and why (importance
scores), parameters before and after, and validation perplexity of teacher and student
right after pruning, before any training. ``distill-train student=pretrained
student.path=<run>/student`` then distills it (sparsity is then no longer enforced).
"""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig

from distill.cache import write_atomic
from distill.errors import DistillError
from distill.eval.metrics import evaluate, num_params
from distill.run.data import prepare_data
from distill.run.outputs import export_student
from distill.run.setup import autocast_dtype, seed, setup_run
from distill.run.student import build_student, finalize_student, student_needs_teacher
from distill.run.teacher import resolve_teacher

log = logging.getLogger(__name__)


def prune(cfg: DictConfig) -> dict:
    if not student_needs_teacher(cfg):
        raise DistillError(
            "distill-prune builds a student from the teacher: choose student=every_other_layer, "
            "depth, width, wanda, magnitude or moe_upcycle"
        )
    out = setup_run(cfg, "prune")
    seed(cfg)
    dm = prepare_data(cfg)
    vocab_size = len(dm.tokenizer)
    teacher = resolve_teacher(cfg, dm, for_training=False).load_weights()
    student = finalize_student(build_student(cfg, teacher, vocab_size, dm))
    report = dict(getattr(student, "pruning_report", None) or {"method": cfg.student._target_})
    scores = evaluate(
        {"teacher": teacher, "student": student},
        dm.val_dataloader(),
        vocab_size,
        autocast_dtype=autocast_dtype(cfg.trainer.precision),
    )
    report.update(
        {
            "teacher.params": num_params(teacher),
            "student.params": num_params(student),
            "student.params_ratio": num_params(student) / num_params(teacher),
            "teacher.val_ppl": scores["teacher"]["val_ppl"],
            "student.val_ppl_pruned": scores["student"]["val_ppl"],
            "student.top1_agreement_pruned": scores["student"]["top1_agreement"],
        }
    )
    export_student(student, dm.tokenizer, out / "student")
    write_atomic(out / "pruning_report.json", json.dumps(report, indent=2, default=str) + "\n")
    log.info(
        "pruned student: %.2fM of %.2fM params (%.3f), val ppl %.2f right after pruning (teacher %.2f); written to %s",
        report["student.params"] / 1e6,
        report["teacher.params"] / 1e6,
        report["student.params_ratio"],
        report["student.val_ppl_pruned"],
        report["teacher.val_ppl"],
        out,
    )
    return report
