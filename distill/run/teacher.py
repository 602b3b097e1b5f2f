"""The teacher step: resolve ``teacher.*`` into one ``TeacherSource``; load ``teacher.path`` or train
the from-scratch teacher (cached by what made it); open the offline cache and check it against the
data, the tokenizer and the objective."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distill.cache import cached_dir, fingerprint
from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.eval.metrics import num_params
from distill.losses.objective import Objective, ce_only
from distill.ranks import after_rank_zero, data_parallel_size
from distill.run.checks import teacher_kind
from distill.run.fit import fit
from distill.run.student import student_needs_teacher
from distill.sharding import unsharded
from distill.student.scratch import build_llama
from distill.teacher.cache import CachedTeacher, TeacherCache, teacher_fingerprint
from distill.teacher.load import load_causal_lm
from distill.teacher.module import Teacher
from distill.teacher.source import TeacherSource

log = logging.getLogger(__name__)


def resolve_teacher(cfg: DictConfig, dm, for_training: bool = True) -> TeacherSource:
    """The teacher of this run. For training, its weights are loaded now when it runs (live) or when
    the student is cut out of them (a pruned student); otherwise only on demand (``load_weights``)."""
    kind = teacher_kind(cfg)  # checked once, here and in check_combination (distill.run.checks)
    source = TeacherSource(
        kind=kind, path=cfg.teacher.get("path"), loader=None if kind == "none" else lambda: prepare_teacher(cfg, dm)
    )
    if for_training and (source.live or (kind == "cache" and student_needs_teacher(cfg))):
        source.load_weights()
    return source


def connect_teacher(cfg: DictConfig, dm, source: TeacherSource, objective: Objective | None = None) -> TeacherSource:
    """What the training module will query, once the data is final (after filters)."""
    if source.kind == "none":
        log.info("teacher: none (black-box: the data is the teacher)")
    elif source.kind == "cache":
        source.scorer = CachedTeacher(
            open_teacher_cache(cfg, dm, source.model), read_top_k=cfg.teacher.get("read_top_k")
        )
        scorer = source.scorer
        entries = f"{scorer.top_k} draws per token" if scorer.cache.sampled else f"top-{scorer.top_k}"
        log.info("teacher: offline cache %s (%s); no teacher model is loaded or run", cfg.teacher.cache_dir, entries)
        if objective is not None:
            check_cache_temperature(source.scorer.temperature, objective)
    else:
        source.scorer = Teacher(source.model)
    return source


def check_cache_temperature(cache_temperature: float, objective: Objective) -> None:
    """The cache stores log-probabilities already softened at its own temperature, and the loss
    applies ``loss.temperature`` on top of them: two temperatures other than 1 would compound
    (teacher at T_cache x T, student at T) without the user asking for it."""
    if cache_temperature != 1.0 and objective.temperature != 1.0 and objective.distills_logits:
        raise DistillError(
            f"the teacher cache was written at temperature {cache_temperature:g} and loss.temperature="
            f"{objective.temperature:g} would soften it again (the teacher at {cache_temperature * objective.temperature:g}, "
            f"the student at {objective.temperature:g}): write the cache at teacher.temperature=1 (recommended) "
            "or train with loss.temperature=1"
        )
    if cache_temperature != 1.0:
        log.info(
            "teacher cache at temperature %g: the targets are softened by the cache, the student is not",
            cache_temperature,
        )


def open_teacher_cache(cfg: DictConfig, dm, teacher_model=None) -> TeacherCache:
    # conversations: the template, the turns trained on and the packing must match (checked first, as the
    # data key also changes with them, and this names the settings to look at)
    expect = {"chat_key": dm.chat_key} if getattr(dm, "chat_key", None) else {}
    expect |= {
        "tokenizer_key": dm.tokenizer_key,
        "data_key": dm.data_key,
        "seq_len": dm.seq_len,
        "vocab_size": len(dm.tokenizer),
        "num_rows": {"train": len(dm.train_blocks)},
    }
    if teacher_model is not None:  # loaded anyway (to prune the student from): the cache must be its outputs
        expect["teacher_key"] = teacher_fingerprint(teacher_model)
    return TeacherCache(cfg.teacher.cache_dir, expect=expect)


def prepare_teacher(cfg: DictConfig, dm):
    """Load ``teacher.path``, or train a Llama from scratch on the corpus (cached by what made it).
    Returns (model, its training history: empty unless trained now)."""
    if cfg.teacher.get("path"):
        return load_causal_lm(cfg.teacher.path), []
    vocab_size = len(dm.tokenizer)
    spec = OmegaConf.to_container(cfg.teacher.scratch, resolve=True)
    # the unfiltered data's key: data filters change what the student sees, never the teacher
    key = fingerprint(
        "teacher-v1",
        spec,
        getattr(dm, "source_key", dm.data_key),
        dm.tokenizer_key,
        dm.seq_len,
        dm.batch_size,
        cfg.seed,
        cfg.trainer.precision,
        *data_parallel_key(cfg),
    )
    history: list[dict] = []

    def build(tmp: Path) -> None:
        arch = {k: spec[k] for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size")}
        model = build_llama(vocab_size, max_seq_len=dm.seq_len, eos_token_id=dm.tokenizer.eos_token_id, **arch)
        module = DistillationModule(
            model,
            ce_only(),
            vocab_size,
            lr=spec["lr"],
            weight_decay=spec["weight_decay"],
            warmup_steps=spec["warmup_steps"],
            max_steps=spec["max_steps"],
        )
        log.info(
            "training the teacher from scratch (%.2fM params, %d steps)", num_params(model) / 1e6, spec["max_steps"]
        )
        _, _, rows = fit(cfg, module, dm, role="teacher", max_steps=spec["max_steps"])
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
    # sampler=sharded-v2: ranks shard our resumable order (not Lightning's DistributedSampler's) since v2
    return [] if size == 1 else [f"data_parallel={size}", "sampler=sharded-v2"]
