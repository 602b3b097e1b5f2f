"""The body of ``distill-cache``: run the teacher once over the training data, keep its top-k (or, with
``teacher.cache_mode=sample``, tokens drawn from it).

Same data, tokenizer and teacher as the ``distill-train`` runs that will read the cache
(the same config tree, with ``teacher=cache``). The teacher's own validation numbers go into
the manifest, so training from the cache can report them without loading the teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from distill.errors import DistillError
from distill.eval.metrics import evaluate, num_params
from distill.run.checks import teacher_kind
from distill.run.cross import student_tokenizer_path
from distill.run.data import filter_training_data, prepare_data
from distill.run.outputs import text_metrics_of
from distill.run.setup import autocast_dtype, device_of, seed, setup_run
from distill.run.teacher import resolve_teacher
from distill.teacher.cache import teacher_fingerprint
from distill.teacher.cache_writer import write_teacher_cache

log = logging.getLogger(__name__)


def build_cache(cfg: DictConfig) -> Path:
    if teacher_kind(cfg) != "cache":
        raise DistillError("distill-cache writes an offline teacher cache: run it with teacher=cache")
    setup_run(cfg, "cache")
    seed(cfg)
    dm = prepare_data(cfg)
    vocab_size = len(dm.tokenizer)
    teacher = resolve_teacher(cfg, dm, for_training=False)
    model = teacher.load_weights()  # this job runs the teacher
    filter_training_data(cfg, dm, teacher)  # the cache covers exactly the blocks the students will train on
    trainer_kwargs = {k: cfg.trainer[k] for k in ("accelerator", "devices", "precision") if k in cfg.trainer}
    device = device_of(cfg)
    scores = evaluate(
        {"teacher": model.to(device)},
        dm.val_dataloader(),
        vocab_size,
        device=device,
        autocast_dtype=autocast_dtype(cfg.trainer.precision),
    )["teacher"]
    keys = {
        "teacher_key": teacher_fingerprint(model),
        "tokenizer_key": dm.tokenizer_key,
        "data_key": dm.data_key,
        "chat_key": getattr(dm, "chat_key", None),
    }
    path = write_teacher_cache(
        model,
        {"train": dm.train_blocks, "val": dm.val_blocks},
        cfg.teacher.cache_dir,
        top_k=cfg.teacher.top_k,
        temperature=cfg.teacher.temperature,
        vocab_size=vocab_size,
        keys=keys,
        shard_rows=cfg.teacher.shard_rows,
        micro_batch=cfg.teacher.micro_batch,
        trainer_kwargs=trainer_kwargs,
        extra={
            "teacher.params": num_params(model),
            "teacher.val_ppl": scores["val_ppl"],
            "teacher.ece": scores["ece"],
            **text_metrics_of(dm, {"teacher": model}, device),  # bits per byte: compares across tokenizers
            # both tokenizers, for the record only: the cache is in the teacher's tokens and positions, and a
            # student with a tokenizer of its own is aligned to them at training time (distill.data.cross)
            "tokenizers": {"teacher": dm.tokenizer_path, "student": student_tokenizer_path(cfg, dm) or "the teacher's"},
        },
        positions=packed_positions(dm),
        cache_format=cfg.teacher.get("cache_format", "fp16"),
        cache_mode=cfg.teacher.get("cache_mode", "topk"),
        samples=cfg.teacher.get("samples", 64),
        sample_seed=cfg.teacher.get("sample_seed", 0),
    )
    log.info("teacher cache ready: %s", path)
    return path


def packed_positions(dm) -> dict | None:
    """Position ids of packed conversations (data.packing=true), so the teacher sees each alone."""
    positions = getattr(dm, "train_extras", {}).get("position_ids")
    return None if positions is None else {"train": positions}
