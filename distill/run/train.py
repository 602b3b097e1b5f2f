"""The body of causal ``distill-train``: the data flow of DESIGN.md in one function.

data -> teacher -> filters -> student -> distil -> control -> evaluate -> export -> metrics + report.
Each step is a small module of ``distill.run``; they hand built objects to each other, and the
teacher travels as one ``TeacherSource``.
"""

from __future__ import annotations

import logging
import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM

from distill.distillation import DistillationModule
from distill.eval.compression import compression_metrics, teacher_forward_tokens
from distill.export.command import check_run_export, export_run
from distill.losses.objective import ce_only
from distill.run.checks import check_combination
from distill.run.cross import cross_tokenizer_data
from distill.run.data import filter_training_data, generation_ids, prepare_data, sequence_kd_data
from distill.run.fit import fit, optim_args
from distill.run.outputs import export_student, log_plan, measure, measure_start, write_reports
from distill.run.plan import plan_run
from distill.run.quant import prepare_quantization
from distill.run.setup import seed, setup_run
from distill.run.student import (
    build_student,
    finalize_quantized,
    save_pruning_report,
    student_spec,
    use_eager_attention,
)
from distill.run.teachers import (
    connect,
    first_cached_metrics,
    forward_cost,
    resolve,
    teachers_metrics,
    unshard_teachers,
)
from distill.sharding import unsharded
from distill.student.lora import apply_lora

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Run the configured distillation; returns ``cfg.optimized_metric`` (for sweeps). ``plan=true``: print
    the plan instead and return NaN (``distill.run.plan``: nothing is loaded or trained)."""
    if cfg.get("plan"):
        return plan_run(cfg)
    start = time.perf_counter()
    out = setup_run(cfg, "train", preemptible=True)
    loss = instantiate(cfg.loss)
    check_combination(cfg, loss)  # fail before any data work
    seed(cfg)

    dm = prepare_data(cfg)
    vocab_size = len(dm.tokenizer)
    chat_ids = generation_ids(dm)  # conversations: pad and end-of-turn ids (before seq-KD swaps the data)
    teacher = resolve(cfg, dm)  # teachers=[...]: one source holding each (distill.run.teachers)
    filter_stats = filter_training_data(cfg, dm, teacher)  # the teacher is given; the student's data is filtered
    connect(cfg, dm, teacher, loss)
    if cfg.seq_kd.enabled:
        dm = sequence_kd_data(cfg, dm, teacher)
    dm = cross_tokenizer_data(cfg, dm, loss, teacher)  # a student (or teachers) with its own tokenizer
    teacher_vocab_size, vocab_size = vocab_size, len(dm.tokenizer)
    student = build_student(cfg, teacher.model, vocab_size, dm)
    save_pruning_report(student, out)
    control_config = student.config  # the control is the student's architecture, without adapters
    lora = student_spec(cfg)[1]
    if lora:
        student = apply_lora(student, **lora, total_steps=cfg.trainer.max_steps)
    teacher.release_weights()
    use_eager_attention(cfg, loss, student=student, teacher=teacher.paired_model)
    plugin, estimate, teacher_quant = prepare_quantization(cfg, student, teacher, dm, vocab_size, loss)
    check_run_export(cfg, student, plugin)  # export.gguf / a ggml QAT type: refuse an unwritable student now
    loss.bind(student, teacher.paired_model)
    log_plan(cfg, teacher, student, dm, loss, estimate["total"])
    module = DistillationModule(
        student,
        loss,
        vocab_size,
        teacher=teacher.scorer,
        seed=cfg.seed,
        teacher_vocab_size=teacher_vocab_size,
        aligner=getattr(dm, "aligner", None),
        **optim_args(cfg),
        **chat_ids,
    )
    start_metrics = measure_start(cfg, dm, vocab_size, teacher, student)
    if plugin is not None:
        plugin.convert_module(module)  # quantize now: fails before training, and a resumed checkpoint fits it
    trainer, meter, history = fit(cfg, module, dm, role="student", plugin=plugin)
    baseline, baseline_history = train_control(cfg, control_config, vocab_size, dm, teacher)
    # FSDP2 sharded these in place: gather their full weights (every rank takes part) to evaluate and export
    student, baseline = unsharded(student), unsharded(baseline)
    unshard_teachers(teacher)
    if not trainer.is_global_zero:
        return float("nan")

    student = finalize_quantized(student, plugin)
    metrics = measure(cfg, dm, vocab_size, teacher, student, baseline, meter, trainer.strategy.root_device)
    metrics.update(run_facts(trainer, dm, teacher, filter_stats, estimate, meter))
    metrics.update(teachers_metrics(cfg, dm, vocab_size, teacher, student, trainer.strategy.root_device))
    metrics.update({k: v for k, v in first_cached_metrics(teacher).items() if k not in metrics})
    metrics.update({**teacher_quant, **start_metrics})
    export_student(student, dm.tokenizer, out / "student", chat_ids.get("stop_ids", ()))
    if plugin is not None:
        metrics.update(plugin.export_extra(student, out))
        metrics["quant"] = plugin.report()
    metrics.update(export_run(cfg, plugin, out))  # student.<type>.gguf, when the run has one
    metrics.update(
        compression_metrics(
            metrics,
            teacher.path,
            out / "student",
            teacher_forward_tokens(teacher.kind, meter.tokens, teacher.cache_manifest),
            time.perf_counter() - start,
        )
    )
    metrics.update(forward_cost(metrics, teacher, meter.tokens, teacher_forward_tokens))  # several teachers
    write_reports(
        metrics,
        out,
        filter_stats,
        {"teacher (from scratch)": teacher.history, "student (distilled)": history, "control": baseline_history},
    )
    return metrics[cfg.optimized_metric]


def train_control(cfg: DictConfig, config, vocab_size: int, dm, teacher) -> tuple:
    """The same student architecture from a fresh random init, CE only, same steps and data."""
    if not cfg.control or teacher.kind == "none":
        return None, []
    torch.manual_seed(cfg.seed)
    baseline = AutoModelForCausalLM.from_config(config)
    _, _, history = fit(cfg, DistillationModule(baseline, ce_only(), vocab_size, **optim_args(cfg)), dm, role="control")
    return baseline, history


def run_facts(trainer, dm, teacher, filter_stats: dict | None, estimate: dict, meter) -> dict:
    """What the run did, beside its quality: steps taken, data available, teacher source, memory."""
    facts = {
        "train.steps": trainer.global_step,  # the steps taken: fewer than configured when stopped early (sweep pruning)
        "data.train_tokens_available": int(dm.train_blocks.size),  # after any filters: the budget's pool
        # where the teacher's outputs came from, and whether this run trained a teacher (sweep reports)
        "teacher.source": teacher.kind,
        "teacher.trained_in_run": bool(teacher.history),
        "memory.estimate_bytes": estimate["total"],
    }
    if filter_stats:
        facts["data.filter_kept_fraction"] = filter_stats["kept_fraction"]
    if meter.peak_bytes is not None:
        facts[f"train.peak_{meter.peak_kind}_bytes"] = meter.peak_bytes
        if meter.start_bytes is not None:  # CPU: what training added over the process at its start
            facts["train.rss_growth_bytes"] = meter.peak_bytes - meter.start_bytes
    return facts
