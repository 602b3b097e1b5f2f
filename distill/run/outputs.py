"""The evaluate/export step: validation metrics of every model, the exported student, and the
run dir's ``metrics.json``, ``report.md`` and ``report.png``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from distill.cache import partial_name, replace_dir, write_atomic
from distill.callbacks.throughput import Throughput
from distill.console import results_table_lines, run_plan_lines
from distill.data.filters.summary import markdown_table
from distill.eval.aligned import evaluate_across
from distill.eval.answers import answer_metrics
from distill.eval.bytes import text_metrics, validation_text
from distill.eval.compression import compression_section
from distill.eval.metrics import evaluate, num_params
from distill.eval.report import gap_closed, plot_curves, write_markdown
from distill.eval.speed import scoring_throughput
from distill.quant.config import quant_section
from distill.run.setup import autocast_dtype, device_of
from distill.teacher.source import SEVERAL, TeacherSource

log = logging.getLogger(__name__)


def log_plan(cfg: DictConfig, teacher: TeacherSource, student, dm, objective, memory_bytes: float) -> None:
    """What the run is about to do, printed before the distillation starts."""
    lines = run_plan_lines(
        teacher_kind=teacher.kind if teacher.kind != SEVERAL else f"{len(teacher.members)} teachers, the first",
        teacher_source=cfg.teacher.get("path") or (cfg.teacher.cache_dir if teacher.kind == "cache" else None),
        teacher_params=num_params(teacher.model) if teacher.model is not None else None,
        student_builder=group_choice("student", cfg.student.get("_target_", "")),
        student_params=num_params(student),
        data_name=group_choice("data", cfg.data.get("_target_", "")),
        train_tokens=int(dm.train_blocks.size),
        objective=objective.weights,
        temperature=objective.temperature,
        steps=cfg.trainer.max_steps,
        tokens_per_step=dm.batch_size * dm.seq_len,
        memory_bytes=memory_bytes,
    )
    log.info("\n".join(lines))


def group_choice(group: str, fallback: str) -> str:
    """The option the user picked for a config group (``student=depth`` -> "depth")."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group) or fallback)
    return fallback


def reference_top1(teacher: TeacherSource):
    """With a top-k cache, agreement is against its stored top-1 on the validation split. A sampled
    cache stores draws, most drawn first: its first slot is the sample's mode, not the teacher's
    top-1 (agreement with it read 0.48 where the live teacher's was 0.72), so no agreement is reported."""
    if teacher.cache is not None and not teacher.cache.sampled and teacher.scorer.has_split("val"):
        return lambda rows: teacher.scorer.outputs(rows, split="val").indices[..., 0]  # stored best first
    return None


def measure_start(cfg: DictConfig, dm, vocab_size: int, teacher: TeacherSource, student) -> dict:
    """The student as built, before any training (``student.*_start``): what training must improve on.
    Skipped under sharding strategies, where one device may not hold the whole models before the
    strategy shards them."""
    if any(s in str(cfg.trainer.get("strategy")).lower() for s in ("fsdp", "deepspeed")):
        return {}
    device = device_of(cfg)
    models = {name: m for name, m in {"teacher": teacher.live_model, "student": student}.items() if m is not None}
    placed = {name: next(m.parameters()).device for name, m in models.items()}
    models = {name: m.to(device) for name, m in models.items()}
    results = evaluate_models(cfg, dm, vocab_size, teacher, models, device)["student"]
    for name, m in models.items():
        m.to(placed[name])  # back where they were: the Trainer places them itself
    return {f"student.{k}_start": v for k, v in results.items() if k != "tokens"}


def is_cross(dm) -> bool:
    """A student with its own tokenizer (``distill.data.cross``): each model is measured on its own rows."""
    return hasattr(dm, "teacher_tokenizer")


def evaluate_models(cfg: DictConfig, dm, vocab_size: int, teacher: TeacherSource, models: dict, device) -> dict:
    """Validation perplexity, agreement and KL of ``models`` (teacher, student, control)."""
    amp = autocast_dtype(cfg.trainer.precision)
    if is_cross(dm):
        return evaluate_across(models, dm, device, amp)
    return evaluate(
        models,
        dm.val_dataloader(),
        vocab_size,
        device=device,
        reference_top1=reference_top1(teacher),
        autocast_dtype=amp,
    )


def text_metrics_of(dm, models: dict, device) -> dict:
    """Bits per byte and per character of every model on the validation text (``validation_text``,
    as distill-eval scores it), each under its own tokenizer: one scale across tokenizers."""
    data = getattr(dm, "base", dm)  # the teacher's data: its tokenizer counts how far the text reaches
    texts = validation_text(data)
    if not texts:
        return {}
    pairs = {name: (m, data.tokenizer if name == "teacher" else dm.tokenizer) for name, m in models.items()}
    return text_metrics(pairs, texts, device)


def measure(cfg, dm, vocab_size, teacher: TeacherSource, student, baseline, meter: Throughput, device) -> dict:
    """Validation metrics of every model; with a cached teacher its numbers come from the cache
    (written by distill-cache) and agreement is against its stored top-1 on the validation split."""
    models = {"teacher": teacher.live_model, "student": student, "baseline": baseline}
    models = {name: m.to(device) for name, m in models.items() if m is not None}
    results = evaluate_models(cfg, dm, vocab_size, teacher, models, device)
    metrics = {}
    batches = [b for _, b in zip(range(4), dm.val_dataloader())]  # cheap: the student/teacher speed ratio
    for name in ("teacher", "student"):
        if name in models:  # each model reads its own tokens (a student with its own tokenizer: data/cross.py)
            own = [b[3]["teacher_inputs"] if name == "teacher" and is_cross(dm) else b[0] for b in batches]
            metrics[f"{name}.scoring_tokens_per_s"] = scoring_throughput(
                models[name], own, device, autocast_dtype(cfg.trainer.precision)
            )
            if is_cross(dm):  # rows hold the same text for both: a speed both share
                metrics[f"{name}.scoring_rows_per_s"] = metrics[f"{name}.scoring_tokens_per_s"] / own[0].shape[1]
    metrics.update(text_metrics_of(dm, models, device))
    if teacher.cache is not None:
        metrics.update({k: v for k, v in teacher.cache_manifest.get("extra", {}).items() if k.startswith("teacher.")})
    for name, model in models.items():
        metrics[f"{name}.params"] = num_params(model)
        metrics.update({f"{name}.{k}": v for k, v in results[name].items()})
    metrics.update(
        {
            "train.tokens": meter.tokens,
            "train.tokens_per_s": meter.tokens_per_s,
            "train.wall_s": meter.wall_s,
            "train.steps": cfg.trainer.max_steps,
            "val.tokens": results["student"]["tokens"],
        }
    )
    for name in models:
        metrics.pop(f"{name}.tokens", None)
    if "teacher.params" in metrics:
        metrics["student.params_ratio"] = metrics["student.params"] / metrics["teacher.params"]
    on = "bits_per_byte" if is_cross(dm) else "val_ppl"  # across tokenizers only bits per byte compare
    closed = gap_closed(metrics, on)
    if closed is not None:
        metrics["gap_closed"], metrics["gap_closed.on"] = closed, on
    data = getattr(dm, "base", dm)  # sequence-level KD trains on the teacher's answers; its prompts are the base's
    if getattr(data, "answers_are_python", False):  # data=stdlib_instruct: do greedy answers compile, start right
        metrics.update(answer_metrics(models, data, device))
    return metrics


def export_student(student, tokenizer, path: Path, stop_ids: tuple[int, ...] = ()) -> None:
    """HF format (safetensors) with the tokenizer (and its chat template); written to a temp dir first so
    no half export remains. ``stop_ids``: a chat student's generation stops at its end of turn."""
    tmp = partial_name(path)
    if stop_ids:
        student.generation_config.eos_token_id = list(stop_ids)
        student.generation_config.pad_token_id = tokenizer.pad_token_id
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, path)


def write_reports(metrics: dict, out: Path, filter_stats: dict | None, histories: dict[str, list[dict]]) -> None:
    """``metrics.json`` (atomic), ``report.md`` and ``report.png`` (loss curves per fit)."""
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_markdown(metrics, out / "report.md", sections=report_sections(filter_stats, metrics))
    plot_curves(histories, out / "report.png")
    log.debug("metrics: %s", json.dumps(metrics))
    log.info("\n".join(results_table_lines(metrics, out)))


def report_sections(filter_stats: dict | None, metrics: dict) -> list[list[str]]:
    sections = [compression_section(metrics)]
    if filter_stats:
        sections.append(
            [
                "## Data filters (training split)",
                "",
                *markdown_table(filter_stats),
                "",
                "Per-filter details: `filter_stats.json`.",
            ]
        )
    sections.append(quant_section(metrics))
    return [s for s in sections if s]
