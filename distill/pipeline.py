"""One run, from config to exported student: the body of ``distill-train``.

Reads as the data-flow in DESIGN.md: data -> tokenizer -> teacher -> student ->
distil -> control -> evaluate -> export -> metrics + report. Every step builds
objects from config and hands built objects to the next; nothing below this
module sees the config.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from distill.cache import cached_dir, fingerprint
from distill.callbacks.history import LossHistory
from distill.callbacks.throughput import Throughput
from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.eval.metrics import evaluate, num_params
from distill.eval.report import gap_closed, plot_curves, write_markdown
from distill.losses.kd import KDLoss
from distill.student.pretrained import check_same_vocab
from distill.student.scratch import build_llama
from distill.teacher.load import check_model_dir, load_causal_lm
from distill.teacher.module import Teacher

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Run the configured pipeline; returns ``cfg.optimized_metric`` (for sweeps)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.teacher.path:
        check_model_dir(cfg.teacher.path)  # fail before any data work
    loss = instantiate(cfg.loss)
    L.seed_everything(cfg.seed, workers=True)

    dm = prepare_data(cfg)
    vocab_size = len(dm.tokenizer)
    teacher_model, teacher_history = prepare_teacher(cfg, dm, vocab_size)
    student = instantiate(cfg.student)(teacher=teacher_model, vocab_size=vocab_size)
    check_vocab(vocab_size, teacher=teacher_model, student=student)

    module = DistillationModule(student, loss, vocab_size, teacher=Teacher(teacher_model), **optim_args(cfg))
    trainer, meter, history = fit(cfg, module, dm, main_run=True)
    baseline, baseline_history = None, []
    if cfg.control:
        torch.manual_seed(cfg.seed)
        baseline = type(student)(student.config)  # same architecture, fresh random init
        control_module = DistillationModule(baseline, loss, vocab_size, **optim_args(cfg))
        _, _, baseline_history = fit(cfg, control_module, dm, main_run=False)
    if not trainer.is_global_zero:
        return float("nan")

    metrics = measure(cfg, dm, vocab_size, teacher_model, student, baseline, meter, trainer.strategy.root_device)
    export_student(student, dm.tokenizer, out / "student")
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_markdown(metrics, out / "report.md")
    plot_curves({"teacher (from scratch)": teacher_history, "student (distilled)": history, "control": baseline_history},
                out / "report.png")
    log.info("metrics: %s", json.dumps(metrics))
    return metrics[cfg.optimized_metric]


def prepare_data(cfg: DictConfig):
    dm = instantiate(cfg.data)
    dm.load_documents()
    tokenizer_dir = cfg.teacher.path or dm.train_tokenizer()
    dm.use_tokenizer(tokenizer_dir)
    check_vocab_early(cfg, dm.tokenizer)
    dm.setup("fit")
    return dm


def check_vocab_early(cfg: DictConfig, tokenizer) -> None:
    """Vocabulary mismatches, from configs and tokenizers alone, before packing data or training."""
    if cfg.teacher.path:
        rows = AutoConfig.from_pretrained(cfg.teacher.path).vocab_size
        if rows < len(tokenizer):
            raise DistillError(
                f"vocabulary mismatch: the teacher predicts {rows} tokens but its tokenizer has {len(tokenizer)}"
            )
    if cfg.student.get("path"):
        check_same_vocab(tokenizer.get_vocab(), cfg.student.path)


def prepare_teacher(cfg: DictConfig, dm, vocab_size: int):
    """Load ``teacher.path``, or train a Llama from scratch on the corpus (cached by what made it)."""
    if cfg.teacher.path:
        return load_causal_lm(cfg.teacher.path), []
    spec = OmegaConf.to_container(cfg.teacher.scratch, resolve=True)
    key = fingerprint("teacher-v1", spec, dm.data_key, dm.tokenizer_key, dm.seq_len, dm.batch_size, cfg.seed,
                      cfg.trainer.precision)
    history: list[dict] = []

    def build(tmp: Path) -> None:
        arch = {k: spec[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")}
        model = build_llama(vocab_size, max_seq_len=dm.seq_len, eos_token_id=dm.tokenizer.eos_token_id, **arch)
        module = DistillationModule(model, KDLoss(), vocab_size, lr=spec["lr"], weight_decay=spec["weight_decay"],
                                    warmup_steps=spec["warmup_steps"], max_steps=spec["max_steps"])
        log.info("training the teacher from scratch (%.2fM params, %d steps)", num_params(model) / 1e6, spec["max_steps"])
        _, _, rows = fit(cfg, module, dm, main_run=False, max_steps=spec["max_steps"])
        history.extend(rows)
        model.save_pretrained(tmp)
        dm.tokenizer.save_pretrained(tmp)

    path = cached_dir(cfg.paths.cache_dir, "teachers", key, build)
    log.info("teacher: %s", path)
    return load_causal_lm(path, what="cached teacher"), history


def check_vocab(vocab_size: int, **models) -> None:
    """Every model must have an output row for every token; extra padding rows are trimmed."""
    for name, model in models.items():
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < vocab_size:
            raise DistillError(
                f"vocabulary mismatch: the {name} predicts {rows} tokens but the tokenizer has {vocab_size}"
            )


def optim_args(cfg: DictConfig) -> dict:
    return dict(cfg.optim, max_steps=cfg.trainer.max_steps)


def fit(cfg: DictConfig, module: DistillationModule, dm, main_run: bool, max_steps: int | None = None):
    """Train ``module`` with the configured Trainer; only the main (distillation) run logs and checkpoints."""
    meter, history = Throughput(), LossHistory()
    callbacks = [meter, history]
    extra = {"max_steps": max_steps or cfg.trainer.max_steps}
    if main_run:
        callbacks += instantiate_all(cfg.callbacks)
        extra["logger"] = instantiate_all(cfg.logger) or False
    else:
        # Teacher and control runs keep only the progress bar: they neither log nor checkpoint.
        callbacks += instantiate_all({k: c for k, c in cfg.callbacks.items() if k == "progress_bar"})
        extra.update(logger=False, enable_checkpointing=False)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, **extra)
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path if main_run else None)
    return trainer, meter, history.rows


def instantiate_all(group) -> list:
    """Objects from a dict-of-configs group; entries without ``_target_`` (leftover overrides of a
    preset that was switched off, e.g. ``callbacks=none`` under an experiment that tunes one) are skipped."""
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def measure(cfg, dm, vocab_size, teacher, student, baseline, meter: Throughput, device) -> dict:
    models = {"teacher": teacher, "student": student}
    if baseline is not None:
        models["baseline"] = baseline
    for model in models.values():
        model.to(device)
    results = evaluate(models, dm.val_dataloader(), vocab_size, device=device,
                       autocast_dtype=autocast_dtype(cfg.trainer.precision))
    metrics = {}
    for name, model in models.items():
        metrics[f"{name}.params"] = num_params(model)
        metrics.update({f"{name}.{k}": v for k, v in results[name].items()})
    metrics.update({
        "train.tokens": meter.tokens,
        "train.tokens_per_s": meter.tokens_per_s,
        "train.wall_s": meter.wall_s,
        "train.steps": cfg.trainer.max_steps,
        "student.params_ratio": metrics["student.params"] / metrics["teacher.params"],
        "val.tokens": len(dm.val_blocks) * dm.seq_len,
    })
    closed = gap_closed(metrics)
    if closed is not None:
        metrics["gap_closed"] = closed
    return metrics


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_student(student, tokenizer, path: Path) -> None:
    """HF format (safetensors) with the tokenizer; written to a temp dir first so no half export remains."""
    tmp = path.with_name(path.name + ".partial")
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
