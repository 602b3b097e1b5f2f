"""One run, from config to exported student: the body of ``distill-train``.

Reads as the data-flow in DESIGN.md: data -> tokenizer -> teacher -> student ->
distil -> control -> evaluate -> export -> metrics + report. Every step builds
objects from config and hands built objects to the next; nothing below this
module sees the config.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from distill.cache import cached_dir, clean_leftovers, fingerprint, partial_name, replace_dir, write_atomic
from distill.callbacks import preemption
from distill.callbacks.resume import ExactResume
from distill.checkpoint_io import AtomicCheckpointIO
from distill.callbacks.history import LossHistory
from distill.callbacks.throughput import Throughput
from distill.data.filters.stage import scores_with_run_teacher
from distill.data.filters.summary import markdown_table
from distill.data.seqkd import seqkd_datamodule
from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.eval.compression import compression_metrics, compression_section, teacher_forward_tokens
from distill.eval.metrics import evaluate, num_params
from distill.eval.report import gap_closed, plot_curves, write_markdown
from distill.eval.speed import scoring_throughput
from distill.losses.objective import Objective, ce_only
from distill.losses.representation import require_eager_attention
from distill.run_info import log_run_info, run_info
from distill.quant.config import (check_load_in, log_memory_estimate, quant_plugin, quant_section,
                                  quantize_teacher_for_run)
from distill.safety import (check_device, check_memory_fits, check_numbers, check_write_paths,
                            set_load_policy, pretrained_kwargs)
from distill.student.lora import AdaLoraAllocator, apply_lora, is_adalora, merge_lora
from distill.student.pretrained import check_same_vocab
from distill.student.scratch import build_llama
from distill.strategies import (after_rank_zero, check_strategy, data_parallel_size, is_main_process,
                                 launch_ranks_as_this_job, unsharded)
from distill.student.sparsity import bake_masks, masked_modules, verify_sparsity
from distill.teacher.cache import CachedTeacher, TeacherCache, teacher_fingerprint
from distill.teacher.load import check_context, check_model_dir, check_tokenizer_dir, load_causal_lm
from distill.teacher.module import Teacher

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Run the configured pipeline; returns ``cfg.optimized_metric`` (for sweeps)."""
    if cfg.get("task", "causal_lm") == "embedding":  # sentence encoders: their own flow, the same fit()
        from distill.embedding.pipeline import train as train_embedding

        return train_embedding(cfg)
    start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    preemption.watch(out)  # under SLURM: checkpoint + requeue on SIGUSR1/USR2/TERM (main fit only)
    backend = teacher_backend(cfg)
    loss = instantiate(cfg.loss)
    check_setup(cfg, backend, loss)  # fail before any data work
    launch_ranks_as_this_job()  # under -m, Lightning's local ranks (ddp, fsdp) run this job, not the whole sweep
    clean_run_dir(out)
    L.seed_everything(cfg.seed, workers=True)

    dm = prepare_data(cfg)
    vocab_size = len(dm.tokenizer)
    teacher_model, teacher_history = load_teacher_model(cfg, dm, vocab_size, backend)
    teacher_dir = cfg.teacher.get("path") or getattr(teacher_model, "name_or_path", None)  # compression summary
    filter_stats = filter_training_data(cfg, dm, teacher_model)  # the teacher is given; the student's data is filtered
    teacher = teacher_for_module(cfg, dm, teacher_model, backend)
    if cfg.get("seq_kd") and cfg.seq_kd.enabled:
        dm = sequence_kd_data(cfg, dm, teacher_model, backend)
    student = build_student(cfg, teacher_model, vocab_size, dm)
    save_pruning_report(student, out)
    control_config = student.config  # the control is the student's architecture, without adapters
    _, lora = student_spec(cfg)
    if lora:
        student = apply_lora(student, **lora, total_steps=cfg.trainer.max_steps)
    live_model = teacher_model if backend == "live" else None
    if backend == "cache" and teacher_model is not None:
        log.info("teacher weights were read only to initialise the pruned student; the teacher is never run")
        teacher_model = None
    use_eager_attention(cfg, loss, student=student, teacher=live_model)
    plugin = quant_plugin(cfg.get("quant"), cfg.trainer.get("precision"), device_of(cfg))
    estimate = log_memory_estimate(student, live_model, plugin, dm, cfg.trainer.get("precision"),
                                   cfg.teacher.get("load_in"), vocab_size)
    check_memory_fits(estimate["total"], device_of(cfg), cfg.memory.get("available_bytes"), cfg.memory.force)
    teacher_quant = quantize_live_teacher(cfg, live_model, dm, vocab_size)
    loss.bind(student, live_model)

    module = DistillationModule(student, loss, vocab_size, teacher=teacher, seed=cfg.seed, **optim_args(cfg))
    if plugin is not None:
        plugin.convert_module(module)  # quantize now: fails before training, and a resumed checkpoint fits it
    trainer, meter, history = fit(cfg, module, dm, main_run=True, plugin=plugin)
    baseline, baseline_history = None, []
    if cfg.control and backend != "none":
        torch.manual_seed(cfg.seed)
        baseline = AutoModelForCausalLM.from_config(control_config)  # same architecture, fresh random init
        control_module = DistillationModule(baseline, ce_only(), vocab_size, **optim_args(cfg))
        _, _, baseline_history = fit(cfg, control_module, dm, main_run=False)
    # FSDP2 sharded these in place: gather their full weights (every rank takes part) to evaluate and export
    student, baseline, live_model = unsharded(student), unsharded(baseline), unsharded(live_model)
    if not trainer.is_global_zero:
        return float("nan")

    student = finalize_quantized(student, plugin)
    metrics = measure(cfg, dm, vocab_size, live_model, teacher, student, baseline, meter, trainer.strategy.root_device)
    metrics["train.steps"] = trainer.global_step  # the steps taken: fewer than configured when stopped early (sweep pruning)
    metrics["data.train_tokens_available"] = int(dm.train_blocks.size)  # after any filters: the budget's pool
    # where the teacher's outputs came from, and whether this run trained a teacher (sweep reports)
    metrics["teacher.source"], metrics["teacher.trained_in_run"] = backend, bool(teacher_history)
    if filter_stats:
        metrics["data.filter_kept_fraction"] = filter_stats["kept_fraction"]
    metrics.update(teacher_quant)
    metrics["memory.estimate_bytes"] = estimate["total"]
    if meter.peak_bytes is not None:
        metrics[f"train.peak_{meter.peak_kind}_bytes"] = meter.peak_bytes
        if meter.start_bytes is not None:  # CPU: what training added over the process at its start
            metrics["train.rss_growth_bytes"] = meter.peak_bytes - meter.start_bytes
    export_student(student, dm.tokenizer, out / "student")
    if plugin is not None:
        metrics.update(plugin.export_extra(student, out))
        metrics["quant"] = plugin.report()
    manifest = teacher.cache.manifest if isinstance(teacher, CachedTeacher) else None
    metrics.update(compression_metrics(metrics, teacher_dir, out / "student",
                                       teacher_forward_tokens(backend, meter.tokens, manifest),
                                       time.perf_counter() - start))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_markdown(metrics, out / "report.md", sections=report_sections(filter_stats, metrics))
    plot_curves({"teacher (from scratch)": teacher_history, "student (distilled)": history, "control": baseline_history},
                out / "report.png")
    log.info("metrics: %s", json.dumps(metrics))
    return metrics[cfg.optimized_metric]


def report_sections(filter_stats: dict | None, metrics: dict) -> list[list[str]]:
    sections = [compression_section(metrics)]
    if filter_stats:
        sections.append(["## Data filters (training split)", "", *markdown_table(filter_stats),
                         "", "Per-filter details: `filter_stats.json`."])
    sections.append(quant_section(metrics))
    return [s for s in sections if s]


def quantize_live_teacher(cfg: DictConfig, model, dm, vocab_size: int) -> dict:
    """``teacher.load_in``: the live teacher stored in less memory, scored on validation before."""
    device = device_of(cfg)

    def val_ppl(m) -> float:
        return evaluate({"teacher": m.to(device)}, dm.val_dataloader(), vocab_size, device=device,
                        autocast_dtype=autocast_dtype(cfg.trainer.precision))["teacher"]["val_ppl"]

    return quantize_teacher_for_run(model, cfg.teacher.get("load_in"), device, val_ppl)


def finalize_quantized(student, plugin):
    """``finalize_student`` with the quantization plugin's own finalize in its place in the order."""
    if plugin is not None and plugin.finalize_before_merge:
        student = plugin.finalize(student)
    student = finalize_student(student)
    if plugin is not None and not plugin.finalize_before_merge:
        student = plugin.finalize(student)
    return student


def teacher_backend(cfg: DictConfig) -> str:
    backend = cfg.teacher.get("backend", "live")
    if backend not in ("live", "cache", "none"):
        raise DistillError(f"teacher.backend must be live, cache or none, got {backend!r}")
    return backend


# Builders that cut the student out of the teacher's weights (scratch and pretrained ones do not).
STUDENTS_FROM_TEACHER = ("distill.student.prune.", "distill.student.depth.", "distill.student.width.",
                         "distill.student.sparsity.", "distill.student.moe.")


def student_needs_teacher(cfg: DictConfig) -> bool:
    return str(cfg.student.get("_target_", "")).startswith(STUDENTS_FROM_TEACHER)


def check_setup(cfg: DictConfig, backend: str, loss: Objective) -> None:
    """Combinations that cannot work, named in one line before any data or model work."""
    check_strategy(cfg.trainer, loss, cfg.get("quant"), cfg.teacher.get("load_in"))  # deepspeed/fsdp that cannot run
    set_load_policy(cfg.get("allow_pickle", False), cfg.get("trust_remote_code", False))
    check_numbers(cfg)
    check_device(cfg)
    check_write_paths(cfg)
    if cfg.teacher.get("path"):
        check_model_dir(cfg.teacher.path)
        check_tokenizer_dir(cfg.teacher.path)
        check_context(cfg.teacher.path, cfg.data.get("seq_len"))
    if cfg.student.get("path"):
        check_model_dir(cfg.student.path, "student.path")
        check_context(cfg.student.path, cfg.data.get("seq_len"), "student.path")
    check_load_in(cfg.teacher.get("load_in"))
    if backend == "none":
        if student_needs_teacher(cfg):
            raise DistillError("teacher=none has no teacher to prune the student from: use student=scratch or student=pretrained")
        if loss.distills_logits or loss.needs_hidden_states or loss.needs_attentions:
            log.info("teacher=none: training on the data with CE only (the teacher's knowledge is in the responses)")
    if backend == "cache":
        needs_live = [name for name, on in (("on-policy sampling (loss.on_policy.lmbda > 0)", loss.on_policy.lmbda > 0),
                                            ("hidden-state terms", loss.needs_hidden_states),
                                            ("attention terms", loss.needs_attentions),
                                            ("loss.fused_linear", loss.fused_linear)) if on]
        if needs_live:
            raise DistillError(f"{needs_live[0]} needs a live teacher, but teacher=cache stores only top-k log-probabilities")


def load_teacher_model(cfg: DictConfig, dm, vocab_size: int, backend: str):
    """The teacher model when this run needs its weights: to run it (live), or to prune the student
    from it (any backend). Returns (model or None, its from-scratch training history)."""
    if backend == "live" or (backend == "cache" and student_needs_teacher(cfg)):
        return prepare_teacher(cfg, dm, vocab_size)
    return None, []


def clean_run_dir(out: Path) -> None:
    """Remove what a killed earlier attempt in this run dir left half-written (a resumed run reuses it)."""
    if is_main_process():
        for leftover in clean_leftovers(out):
            log.warning("removed an incomplete file left by a killed run: %s", leftover)


def teacher_for_module(cfg: DictConfig, dm, model, backend: str):
    """What the DistillationModule queries: the live teacher, the offline cache, or nothing."""
    if backend == "none":
        log.info("teacher: none (black-box: the data is the teacher)")
        return None
    if backend == "cache":
        cached = CachedTeacher(open_teacher_cache(cfg, dm, model), read_top_k=cfg.teacher.get("read_top_k"))
        log.info("teacher: offline cache %s (top-%d); no teacher model is loaded or run",
                 cfg.teacher.cache_dir, cached.top_k)
        return cached
    return Teacher(model)


def filter_training_data(cfg: DictConfig, dm, teacher_model) -> dict | None:
    """Run ``data/filters`` over the training split (cached) and repack from what they keep."""
    if not getattr(dm, "filters", None):
        return None
    stats = run_data_filters(cfg, dm, teacher_model)
    dm.setup("fit")
    return stats


def run_data_filters(cfg: DictConfig, dm, teacher_model=None, require_kept: bool = True) -> dict:
    """The filters over ``dm``'s training split, their stats kept in the run dir (``filter_stats.json``).
    Model-based filters score with the teacher: its directory is ``teacher.path`` or the cached
    from-scratch teacher (trained on the unfiltered data, as a given teacher would have been)."""
    teacher_path = cfg.teacher.get("path") or (teacher_model.name_or_path if teacher_model is not None else None)
    if teacher_path is None and scores_with_run_teacher(dm.filters.values()) and teacher_backend(cfg) != "none":
        dm.setup("fit")  # a from-scratch teacher trains on the packed, unfiltered data (no-op once packed)
        teacher_path = prepare_teacher(cfg, dm, len(dm.tokenizer))[0].name_or_path
    stats = dm.apply_filters(teacher_path=teacher_path, device=device_of(cfg), require_kept=require_kept)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # every rank filters (the same, cached); one writes
        write_atomic(out / "filter_stats.json", json.dumps(stats, indent=2) + "\n")
    return stats


def device_of(cfg: DictConfig) -> str:
    return "cuda" if cfg.trainer.get("accelerator") in ("gpu", "cuda") else "cpu"


def sequence_kd_data(cfg: DictConfig, dm, teacher_model, backend: str):
    """Swap the training data for the teacher's own continuations (generated once, cached)."""
    if backend != "live":
        raise DistillError("seq_kd.enabled needs a live teacher to generate continuations (teacher=live)")
    spec = cfg.seq_kd
    log.info("sequence-level KD: teacher continuations of %s training blocks", spec.max_examples or len(dm.train_blocks))
    return seqkd_datamodule(
        dm, teacher_model, teacher_key=teacher_fingerprint(cfg.teacher.get("path") or teacher_model),
        prompt_tokens=spec.prompt_tokens, new_tokens=spec.new_tokens, temperature=spec.temperature, seed=cfg.seed,
        batch_size=spec.batch_size, max_examples=spec.max_examples, cache_dir=cfg.paths.cache_dir,
        device=device_of(cfg),
    )


def open_teacher_cache(cfg: DictConfig, dm, teacher_model=None) -> TeacherCache:
    expect = {"tokenizer_key": dm.tokenizer_key, "data_key": dm.data_key, "seq_len": dm.seq_len,
              "vocab_size": len(dm.tokenizer), "num_rows": {"train": len(dm.train_blocks)}}
    if teacher_model is not None:  # loaded anyway (to prune the student from): the cache must be its outputs
        expect["teacher_key"] = teacher_fingerprint(teacher_model)
    return TeacherCache(cfg.teacher.cache_dir, expect=expect)


def student_spec(cfg: DictConfig) -> tuple[dict, dict | None]:
    """The builder's config, and the LoRA block when adapters are on (``student.lora.r > 0``)."""
    spec = OmegaConf.to_container(cfg.student, resolve=True)
    lora = spec.pop("lora", None)
    return spec, (lora if lora and lora.get("r") else None)


def build_student(cfg: DictConfig, teacher_model, vocab_size: int, dm):
    """The student as its builder makes it (pruned, scratch, ...), before any adapters."""
    spec, _ = student_spec(cfg)
    tokenizer = dm.tokenizer
    student = instantiate(spec)(teacher=teacher_model, vocab_size=vocab_size, train_blocks=dm.train_blocks)
    student.requires_grad_(True).train()  # builders that copy the (frozen, eval-mode) teacher copy that too
    check_vocab(vocab_size, teacher=teacher_model, student=student)
    if student.config.eos_token_id is None:  # a student built without a teacher: the tokenizer's EOS
        for c in (student.config, student.generation_config):
            c.eos_token_id = c.bos_token_id = c.pad_token_id = tokenizer.eos_token_id
    return student


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


def prepare_data(cfg: DictConfig):
    dm = instantiate(cfg.data)
    dm.load_documents()
    tokenizer_dir = cfg.teacher.get("path") or dm.train_tokenizer()
    dm.use_tokenizer(tokenizer_dir)
    check_vocab_early(cfg, dm.tokenizer)
    dm.setup("fit")
    return dm


def check_vocab_early(cfg: DictConfig, tokenizer) -> None:
    """Vocabulary mismatches, from configs and tokenizers alone, before packing data or training."""
    if cfg.teacher.get("path"):
        rows = AutoConfig.from_pretrained(cfg.teacher.path, **pretrained_kwargs()).vocab_size
        if rows < len(tokenizer):
            raise DistillError(
                f"vocabulary mismatch: the teacher predicts {rows} tokens but its tokenizer has {len(tokenizer)}"
            )
    if cfg.student.get("path"):
        check_same_vocab(tokenizer.get_vocab(), cfg.student.path)


def prepare_teacher(cfg: DictConfig, dm, vocab_size: int):
    """Load ``teacher.path``, or train a Llama from scratch on the corpus (cached by what made it)."""
    if cfg.teacher.get("path"):
        return load_causal_lm(cfg.teacher.path), []
    spec = OmegaConf.to_container(cfg.teacher.scratch, resolve=True)
    # the unfiltered data's key: data filters change what the student sees, never the teacher
    key = fingerprint("teacher-v1", spec, getattr(dm, "source_key", dm.data_key), dm.tokenizer_key, dm.seq_len,
                      dm.batch_size, cfg.seed, cfg.trainer.precision, *data_parallel_key(cfg))
    history: list[dict] = []

    def build(tmp: Path) -> None:
        arch = {k: spec[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")}
        model = build_llama(vocab_size, max_seq_len=dm.seq_len, eos_token_id=dm.tokenizer.eos_token_id, **arch)
        module = DistillationModule(model, ce_only(), vocab_size, lr=spec["lr"], weight_decay=spec["weight_decay"],
                                    warmup_steps=spec["warmup_steps"], max_steps=spec["max_steps"])
        log.info("training the teacher from scratch (%.2fM params, %d steps)", num_params(model) / 1e6, spec["max_steps"])
        _, _, rows = fit(cfg, module, dm, main_run=False, max_steps=spec["max_steps"])
        history.extend(rows)
        model = unsharded(model)  # FSDP2: full weights; every rank saves the same into its own tmp (atomic rename)
        model.save_pretrained(tmp)
        dm.tokenizer.save_pretrained(tmp)

    final = Path(cfg.paths.cache_dir).expanduser() / "teachers" / key
    path = cached_dir(cfg.paths.cache_dir, "teachers", key, after_rank_zero(build, final))  # rank 0 saves it
    log.info("teacher: %s", path)
    return load_causal_lm(path, what="cached teacher"), history


def data_parallel_key(cfg: DictConfig) -> list:
    """Processes sharing the data, for cache keys: a teacher trained by 2 ranks saw twice the batch.
    Empty for one process, so single-process keys are unchanged."""
    size = data_parallel_size(cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1))
    return [] if size == 1 else [f"data_parallel={size}"]


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


def optim_args(cfg: DictConfig) -> dict:
    return dict(cfg.optim, max_steps=cfg.trainer.max_steps)


def fit(cfg: DictConfig, module: DistillationModule, dm, main_run: bool, max_steps: int | None = None,
        plugin=None):
    """Train ``module`` with the configured Trainer; only the main (distillation) run logs, checkpoints
    and quantizes (a quantization plugin replaces ``trainer.precision``, which it wraps)."""
    meter, history = Throughput(), LossHistory()
    callbacks = [meter, history]
    if is_adalora(module.student):
        callbacks.append(AdaLoraAllocator())
    extra = {"max_steps": max_steps or cfg.trainer.max_steps}
    if main_run:
        # atomic checkpoints, loaded without pickle; RNG and mid-epoch data position saved for exact resume
        callbacks.append(ExactResume())
        callbacks += preemption.callbacks()
        extra["plugins"] = [AtomicCheckpointIO(allow_pickle=cfg.get("allow_pickle", False))]
        loggers = instantiate_all(cfg.logger)
        log_run_info(loggers, run_info(cfg))
        callbacks += [c for c in instantiate_all(cfg.callbacks)
                      if loggers or not isinstance(c, LearningRateMonitor)]  # it refuses to run without a logger
        extra["logger"] = loggers or False
    else:
        # Teacher and control runs keep only the progress bar: they neither log nor checkpoint.
        callbacks += instantiate_all({k: c for k, c in cfg.callbacks.items() if k == "progress_bar"})
        extra.update(logger=False, enable_checkpointing=False)
    if plugin is not None:
        extra.update(plugins=[*extra.get("plugins", []), plugin], precision=None)
    if preemption.under_slurm():  # Lightning's own hpc save/requeue off in every fit: ours, main run only
        extra["plugins"] = [*extra.get("plugins", []), preemption.slurm_environment()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, **extra)
    ckpt_path = preemption.resume_path(cfg.paths.output_dir, cfg.ckpt_path) if main_run else None
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, meter, history.rows


def instantiate_all(group) -> list:
    """Objects from a dict-of-configs group; entries without ``_target_`` (leftover overrides of a
    preset that was switched off, e.g. ``callbacks=none`` under an experiment that tunes one) are skipped."""
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def measure(cfg, dm, vocab_size, teacher_model, teacher, student, baseline, meter: Throughput, device) -> dict:
    """Validation metrics of every model; with a cached teacher its numbers come from the cache
    (written by distill-cache) and agreement is against its stored top-1 on the validation split."""
    models = {"teacher": teacher_model, "student": student, "baseline": baseline}
    models = {name: m.to(device) for name, m in models.items() if m is not None}
    reference_top1 = None
    if isinstance(teacher, CachedTeacher) and teacher.has_split("val"):
        reference_top1 = lambda rows: teacher.outputs(rows, split="val").indices[..., 0]  # noqa: E731 (stored best first)
    results = evaluate(models, dm.val_dataloader(), vocab_size, device=device, reference_top1=reference_top1,
                       autocast_dtype=autocast_dtype(cfg.trainer.precision))
    metrics = {}
    speed_batches = [b[0] for _, b in zip(range(4), dm.val_dataloader())]  # cheap: the student/teacher speed ratio
    for name in ("teacher", "student"):
        if name in models:
            metrics[f"{name}.scoring_tokens_per_s"] = scoring_throughput(
                models[name], speed_batches, device, autocast_dtype(cfg.trainer.precision))
    if isinstance(teacher, CachedTeacher):
        metrics.update({k: v for k, v in teacher.cache.manifest.get("extra", {}).items() if k.startswith("teacher.")})
    for name, model in models.items():
        metrics[f"{name}.params"] = num_params(model)
        metrics.update({f"{name}.{k}": v for k, v in results[name].items()})
    metrics.update({
        "train.tokens": meter.tokens,
        "train.tokens_per_s": meter.tokens_per_s,
        "train.wall_s": meter.wall_s,
        "train.steps": cfg.trainer.max_steps,
        "val.tokens": results["student"]["tokens"],
    })
    for name in models:
        metrics.pop(f"{name}.tokens", None)
    if "teacher.params" in metrics:
        metrics["student.params_ratio"] = metrics["student.params"] / metrics["teacher.params"]
    closed = gap_closed(metrics)
    if closed is not None:
        metrics["gap_closed"] = closed
    return metrics


def export_student(student, tokenizer, path: Path) -> None:
    """HF format (safetensors) with the tokenizer; written to a temp dir first so no half export remains."""
    tmp = partial_name(path)
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, path)
