"""Writing the offline teacher cache with ``Trainer.predict``.

Each predict "batch" is one unfinished shard (its packed rows); ``TopKTeacher.predict_step``
runs the teacher over it in micro-batches and keeps the top-k log-probabilities (or, with
``teacher.cache_mode=sample``, N tokens drawn from its distribution and their counts: ``distill.teacher.sampled``);
``TeacherCacheWriter`` saves the shard atomically. Using the Trainer rather than a hand loop
gives devices, precision and DDP for free: under DDP each rank predicts different shards.
The formats are in ``distill.teacher.cache_manifest`` (and ``distill.teacher.compact``), the reader in
``distill.teacher.cache``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill.errors import DistillError
from distill.teacher.cache import TeacherCache
from distill.teacher.cache_manifest import (
    IDENTITY_FIELDS,
    SAMPLED,
    all_shards,
    build_manifest,
    encode_shard,
    measured_bytes_per_token,
    missing_shards,
    read_manifest,
    shard_paths,
    write_manifest,
)
from distill.teacher.sampled import CACHE_MODES, draw, shard_generator

log = logging.getLogger(__name__)


class ShardDataset(Dataset):
    """One item per unfinished shard: its split, number and input ids ``[rows, seq_len]`` (and the
    position ids of packed conversations, for the splits that have them)."""

    def __init__(self, blocks: dict, shards: list[tuple[str, int]], shard_rows: int, positions: dict | None = None):
        self.blocks, self.shards, self.shard_rows, self.positions = blocks, shards, shard_rows, positions or {}

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict:
        split, shard = self.shards[i]
        rows = slice(shard * self.shard_rows, (shard + 1) * self.shard_rows)
        item = {
            "split": split,
            "shard": shard,
            "input_ids": torch.from_numpy(self.blocks[split][rows, :-1].astype(np.int64)),
        }
        if split in self.positions:
            item["position_ids"] = torch.from_numpy(self.positions[split][rows, :-1].astype(np.int64))
        return item


def _one_item(items: list[dict]) -> dict:
    return items[0]


class TopKTeacher(L.LightningModule):
    """The teacher as a predictor of top-k log-probabilities.

    Logits are trimmed to ``vocab_size`` first (embedding rows padded past the tokenizer,
    e.g. Qwen's 152,064 vs 151,936, are never real tokens), divided by the temperature and
    normalised in float32 over the whole vocabulary, so the stored values are true
    log-probabilities even though only k of them are kept. With ``sample_seed`` set, ``top_k`` tokens are
    drawn from that same distribution instead, and the "values" are their counts (``sampled.draw``)."""

    def __init__(
        self,
        model: nn.Module,
        vocab_size: int,
        top_k: int,
        temperature: float,
        micro_batch: int,
        sample_seed: int | None = None,
    ):
        super().__init__()
        self.model = getattr(model, "model", model) if isinstance(model, L.LightningModule) else model
        self.model.eval()
        self.vocab_size, self.top_k, self.temperature, self.micro_batch = vocab_size, top_k, temperature, micro_batch
        self.sample_seed = sample_seed

    def train(self, mode: bool = True) -> TopKTeacher:
        return super().train(False)

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 log-probabilities, int64 ids) ``[rows, seq_len, k]``: the writer stores them in the
        cache's format (the compact one is encoded from float32, not from float16 roundings)."""
        values, indices = [], []
        positions = batch.get("position_ids")
        generator = (
            None if self.sample_seed is None else shard_generator(self.sample_seed, batch["split"], batch["shard"])
        )
        for n, ids in enumerate(batch["input_ids"].split(self.micro_batch)):
            packed = (
                {}
                if positions is None
                else {"position_ids": positions[n * self.micro_batch : (n + 1) * self.micro_batch]}
            )
            logits = self.model(input_ids=ids, use_cache=False, **packed).logits
            if logits.shape[-1] < self.vocab_size:
                raise DistillError(
                    f"vocabulary mismatch: the teacher predicts {logits.shape[-1]} tokens but the "
                    f"tokenizer has {self.vocab_size}"
                )
            logits = logits[..., : self.vocab_size].float()
            if self.temperature != 1.0:
                logits = logits / self.temperature
            log_probs = torch.log_softmax(logits, dim=-1)
            if generator is None:
                v, i = log_probs.topk(self.top_k, dim=-1)
            else:
                v, i = draw(log_probs, self.top_k, generator)
            values.append(v.cpu())
            indices.append(i.cpu())
        # Joined in numpy: torch.cat of float16 under a bf16 autocast context is refused by torch.
        return np.concatenate([v.float().numpy() for v in values]), np.concatenate([i.numpy() for i in indices])


class TeacherCacheWriter(BasePredictionWriter):
    """Saves each predicted shard, in the format of the cache's ``manifest``, under temp names and
    renames it into place (indices first, values last), so a shard is on disk complete or not at all."""

    def __init__(self, cache_dir: str | Path, manifest: dict):
        super().__init__(write_interval="batch")
        self.cache_dir, self.manifest = Path(cache_dir), manifest

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        values, indices = encode_shard(self.manifest, *prediction)
        split, shard = batch["split"], int(batch["shard"])
        values_path, indices_path = shard_paths(self.cache_dir, split, shard)
        values_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_indices = _save_tmp(indices_path, indices)
        tmp_values = _save_tmp(values_path, values)
        os.replace(tmp_indices, indices_path)
        os.replace(tmp_values, values_path)

    def on_predict_end(self, trainer, pl_module):
        trainer.strategy.barrier("teacher-cache-written")  # every rank's shards are on disk before anyone checks


def _save_tmp(final: Path, array: np.ndarray) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    with os.fdopen(fd, "wb") as f:
        np.save(f, array)
    return Path(tmp)


@contextlib.contextmanager
def _quiet_lightning():
    """Hide the Trainer's banner lines (GPU available..., LOCAL_RANK...), the few-workers
    hint and a Lightning-internal deprecation notice: the writer reports what it did itself."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)  # lightning 2.6 on torch 2.13
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def write_teacher_cache(
    teacher_model: nn.Module,
    blocks: dict[str, np.ndarray],
    cache_dir: str | Path,
    *,
    vocab_size: int,
    keys: dict[str, str],
    top_k: int = 64,
    temperature: float = 1.0,
    shard_rows: int = 256,
    micro_batch: int = 8,
    trainer_kwargs: dict | None = None,
    progress_bar: bool = True,
    extra: dict | None = None,
    positions: dict[str, np.ndarray] | None = None,
    cache_format: str = "fp16",
    cache_mode: str = "topk",
    samples: int = 64,
    sample_seed: int = 0,
) -> Path:
    """Run the teacher over packed ``blocks`` (``{split: [n, seq_len + 1]}``) and cache its
    top-k log-probabilities in ``cache_dir``, in ``cache_format`` (``fp16`` or ``compact``);
    resumable, a rerun writes only missing shards. ``cache_mode="sample"`` caches ``samples`` draws
    per token instead, seeded by ``sample_seed`` (``distill.teacher.sampled``; its own layout).

    ``keys`` holds ``teacher_key``, ``tokenizer_key`` and ``data_key``. ``trainer_kwargs``
    go to the Trainer (accelerator, devices, precision, strategy; default one device). The
    Trainer may move the model to its device and precision. Returns ``cache_dir``."""
    cache_dir = Path(cache_dir).expanduser()
    if not blocks:
        raise ValueError("blocks must hold at least one split")
    seq_lens = {a.shape[1] - 1 for a in blocks.values()}
    if len(seq_lens) != 1 or any(a.ndim != 2 for a in blocks.values()):
        raise ValueError("every split must be a [n, seq_len + 1] array with one seq_len")
    top_k, cache_format = _slots(cache_mode, cache_format, top_k, samples)
    if not 1 <= top_k <= vocab_size:
        what = "samples" if cache_mode == "sample" else "top_k"
        raise DistillError(f"teacher.{what} must be between 1 and the vocabulary size {vocab_size} (got {top_k})")
    if not temperature > 0:
        raise DistillError(f"teacher.temperature must be > 0 (got {temperature})")
    if shard_rows < 1 or micro_batch < 1:
        raise DistillError(f"shard_rows and micro_batch must be >= 1 (got {shard_rows}, {micro_batch})")

    manifest = build_manifest(
        keys=keys,
        top_k=top_k,
        temperature=temperature,
        vocab_size=vocab_size,
        seq_len=seq_lens.pop(),
        split_rows={k: len(v) for k, v in blocks.items()},
        shard_rows=shard_rows,
        extra=extra,
        cache_format=cache_format,
        sample_seed=sample_seed,
    )
    old = read_manifest(cache_dir)
    if old is not None:
        differ = [f for f in IDENTITY_FIELDS if old.get(f) != manifest[f]]
        if differ:
            detail = ", ".join(f"{f} {old.get(f)!r} there, {manifest[f]!r} now" for f in differ)
            raise DistillError(
                f"teacher cache {cache_dir} holds a different build ({detail}): use a new "
                "teacher.cache_dir or delete that one"
            )
        manifest["extra"] = {**old.get("extra", {}), **manifest["extra"]}
    write_manifest(cache_dir, manifest)  # first, so an interrupted cache says what it is
    for stale in cache_dir.glob("*/.shard-*.partial"):  # leftovers of a crash; no write is in flight yet
        stale.unlink(missing_ok=True)

    todo = missing_shards(cache_dir, manifest)
    total = len(all_shards(manifest))
    log.info(
        "teacher cache %s: %d of %d shards already written, writing %d (%s-%d, %s format, %d bytes/token)",
        cache_dir,
        total - len(todo),
        total,
        len(todo),
        "samples" if cache_mode == "sample" else "top",
        top_k,
        cache_format,
        manifest["bytes_per_token"],
    )
    if todo:
        writer = TeacherCacheWriter(cache_dir, manifest)
        loader = DataLoader(ShardDataset(blocks, todo, shard_rows, positions), batch_size=1, collate_fn=_one_item)
        seed = sample_seed if cache_format == SAMPLED else None
        module = TopKTeacher(teacher_model, vocab_size, top_k, temperature, micro_batch, sample_seed=seed)
        kwargs = {"accelerator": "auto", "devices": 1, **(trainer_kwargs or {})}
        with _quiet_lightning():
            trainer = L.Trainer(
                callbacks=[writer],
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=progress_bar,
                **kwargs,
            )
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        if not trainer.is_global_zero:
            return cache_dir
    TeacherCache(cache_dir)  # checks every shard is there
    # its size on disk, now that every shard is there: every format records it, so caches of different
    # layouts compare at equal bytes (bytes_per_token stays the fp16 payload, k x 4 at vocab <= 65,536)
    manifest["measured_bytes_per_token"] = measured_bytes_per_token(cache_dir, manifest)
    if cache_format != "fp16":
        manifest["bytes_per_token"] = manifest["measured_bytes_per_token"]
    write_manifest(cache_dir, manifest)
    log.info(
        "teacher cache %s: complete (%d shards, %d written now, %s bytes/token)",
        cache_dir,
        total,
        len(todo),
        manifest["bytes_per_token"],
    )
    return cache_dir


def _slots(cache_mode: str, cache_format: str, top_k: int, samples: int) -> tuple[int, str]:
    """(entries per token, the layout written) of ``teacher.cache_mode`` and ``teacher.cache_format``."""
    if cache_mode not in CACHE_MODES:
        raise DistillError(f"teacher.cache_mode must be one of {', '.join(CACHE_MODES)} (got {cache_mode!r})")
    if cache_mode == "topk":
        return top_k, cache_format
    if cache_format != "fp16":  # fp16 is the default; the sampled layout is its own (ids + counts)
        raise DistillError(
            f"teacher.cache_format={cache_format} is a top-k layout: teacher.cache_mode=sample writes its own "
            "(token ids + counts); leave teacher.cache_format at fp16"
        )
    return samples, SAMPLED
