"""The data step: documents, the tokenizer (the teacher's, or one trained on the corpus), packed
blocks, the data filters over the training split, and sequence-level KD's generated data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import AutoConfig

from distill.cache import write_atomic
from distill.data.chat.seqkd import chat_seqkd_datamodule
from distill.data.filters.stage import scores_with_run_teacher
from distill.data.seqkd import seqkd_datamodule
from distill.errors import DistillError
from distill.ranks import is_main_process
from distill.run.setup import device_of
from distill.safety import pretrained_kwargs
from distill.teacher.cache import teacher_fingerprint
from distill.teacher.source import TeacherSource

log = logging.getLogger(__name__)


def load_data(cfg: DictConfig, dm=None):
    """The datamodule (``dm``, or one built from ``data``) with its documents and tokenizer, not yet packed."""
    dm = dm if dm is not None else instantiate(cfg.data)
    dm.load_documents()
    dm.use_tokenizer(cfg.teacher.get("path") or dm.train_tokenizer())
    return dm


def prepare_data(cfg: DictConfig):
    """Documents, tokenizer and packed blocks; vocabulary mismatches refused before packing."""
    dm = load_data(cfg)
    check_vocab_early(cfg, dm.tokenizer)
    dm.setup("fit")
    write_data_stats(cfg, dm)
    return dm


def write_data_stats(cfg: DictConfig, dm) -> None:
    """What the row builder kept, cut and skipped (conversations, prompt/response examples), in the run dir."""
    stats = getattr(dm, "stats", None)
    if stats and is_main_process():
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "data_stats.json", json.dumps(stats, indent=2) + "\n")


def generation_ids(dm) -> dict:
    """Pad and stop ids for on-policy answers to conversations (their template's end of turn)."""
    if not hasattr(dm, "special_ids"):
        return {}
    pad, stops = dm.special_ids()
    return {"pad_id": pad, "stop_ids": tuple(stops)}


def check_vocab_early(cfg: DictConfig, tokenizer) -> None:
    """Vocabulary mismatches, from configs and tokenizers alone, before packing data or training."""
    if cfg.teacher.get("path"):
        rows = AutoConfig.from_pretrained(cfg.teacher.path, **pretrained_kwargs()).vocab_size
        if rows < len(tokenizer):
            raise DistillError(
                f"vocabulary mismatch: the teacher predicts {rows} tokens but its tokenizer has {len(tokenizer)}"
            )
    # a student with a tokenizer of its own is checked against the objective in distill.run.cross


def filter_training_data(cfg: DictConfig, dm, teacher: TeacherSource) -> dict | None:
    """Run ``data/filters`` over the training split (cached) and repack from what they keep."""
    if not getattr(dm, "filters", None):
        return None
    stats = run_data_filters(cfg, dm, teacher)
    dm.setup("fit")
    return stats


def run_data_filters(cfg: DictConfig, dm, teacher: TeacherSource, require_kept: bool = True) -> dict:
    """The filters over ``dm``'s training split, their stats kept in the run dir (``filter_stats.json``).
    Model-based filters score with the teacher: its directory is ``teacher.path`` or the cached
    from-scratch teacher (trained on the unfiltered data, as a given teacher would have been)."""
    teacher_path = teacher.path
    if teacher_path is None and teacher.kind != "none" and scores_with_run_teacher(dm.filters.values()):
        dm.setup("fit")  # a from-scratch teacher trains on the packed, unfiltered data (no-op once packed)
        teacher_path = teacher.model_dir()
    stats = dm.apply_filters(teacher_path=teacher_path, device=device_of(cfg), require_kept=require_kept)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # every rank filters (the same, cached); one writes
        write_atomic(out / "filter_stats.json", json.dumps(stats, indent=2) + "\n")
    return stats


def sequence_kd_data(cfg: DictConfig, dm, teacher: TeacherSource):
    """Swap the training data for the teacher's own continuations (generated once, cached)."""
    if not teacher.live:
        raise DistillError("seq_kd.enabled needs a live teacher to generate continuations (teacher=live)")
    spec = cfg.seq_kd
    common = dict(
        teacher_key=teacher_fingerprint(cfg.teacher.get("path") or teacher.model),
        new_tokens=spec.new_tokens,
        temperature=spec.temperature,
        seed=cfg.seed,
        batch_size=spec.batch_size,
        max_examples=spec.max_examples,
        cache_dir=cfg.paths.cache_dir,
        device=device_of(cfg),
    )
    if "prompt_len" in getattr(dm, "train_extras", {}) or getattr(dm, "packing", False):  # conversations
        return chat_seqkd_datamodule(dm, teacher.model, **common)  # each conversation's own prompt
    log.info(
        "sequence-level KD: teacher continuations of %s training blocks", spec.max_examples or len(dm.train_blocks)
    )
    return seqkd_datamodule(dm, teacher.model, prompt_tokens=spec.prompt_tokens, **common)
