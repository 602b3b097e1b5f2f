"""The offline teacher cache: the reader, its checks against the run, and the teacher fingerprint.

``distill-cache`` runs the teacher once and stores, per token, its top-k log-probabilities,
so training with ``teacher=cache`` loads no teacher model. Layout of a cache directory::

    manifest.json                      what was cached, with which teacher/tokenizer/data
    train/shard-00000.values.npy       [rows, seq_len, k] float16 log-probs, best first
    train/shard-00000.indices.npy      [rows, seq_len, k] token ids, narrowest int type
    val/...                            same, when the validation split was cached

That is the default ``fp16`` format; ``teacher.cache_format=compact`` stores the same shards as byte
records of about 100 bytes per token (``distill.teacher.compact``), decoded here on every lookup.
``teacher.cache_mode=sample`` stores N tokens drawn from the teacher and their counts instead
(``distill.teacher.sampled``), read back as the log of the empirical distribution count / N.

Shard ``s`` of a split holds its packed rows ``[s * shard_rows, (s + 1) * shard_rows)``.
Each file is written under a temporary name and renamed (indices first, values last),
so a shard whose two files both exist is complete; that is how a restarted writer skips
finished work and how the reader tells a finished cache from an interrupted one.
The manifest, the format versions and the shard paths are in ``distill.teacher.cache_manifest``,
the writer in ``distill.teacher.cache_writer``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.cache import fingerprint
from distill.errors import DistillError
from distill.losses.objective import Outputs
from distill.teacher import compact
from distill.teacher.cache_manifest import (
    IDENTITY_FIELDS,
    SAMPLED,
    all_shards,
    bytes_per_token,
    format_of,
    index_dtype_for,
    missing_shards,
    read_manifest,
    shard_paths,
    stored_widths,
)
from distill.teacher.outputs import SparseTeacher
from distill.teacher.sampled import check_objective, to_logprobs

# What a mismatch in each field means to a user, for the reader's one-line refusal.
_FIELD_MEANING = {
    "data_key": "data",
    "chat_key": "chat",
    "seq_len": "data",
    "num_rows": "data",
    "tokenizer_key": "tokenizer",
    "vocab_size": "tokenizer",
    "teacher_key": "teacher",
    "top_k": "settings",
    "temperature": "settings",
}


def teacher_fingerprint(model_or_dir: str | Path | nn.Module) -> str:
    """A hash that changes when the teacher does.

    For a model directory: its ``config.json`` plus the names and sizes of its weight
    files (cheap even for a 70B model). For an in-memory model: its config and the bytes
    of its state dict (meant for the small from-scratch teachers; pass the directory of
    a large one)."""
    if isinstance(model_or_dir, (str, Path)):
        p = Path(model_or_dir).expanduser()
        config = (p / "config.json").read_text() if (p / "config.json").is_file() else ""
        weights = sorted(
            (f.name, f.stat().st_size)
            for f in p.iterdir()
            if f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf")
        )
        return fingerprint("teacher-dir-v1", config, weights)
    import hashlib

    model = getattr(model_or_dir, "model", model_or_dir)  # a Teacher LightningModule wraps the HF model
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# -- the reader -------------------------------------------------------------------
class TeacherCache:
    """A finished cache, checked against what the run expects, read through memory maps.

    ``expect`` holds manifest fields the run knows (``tokenizer_key``, ``data_key``,
    ``seq_len``, ``vocab_size``, ...); ``num_rows`` may be ``{split: rows}``, the rows the run
    will look up (the cache must hold at least these). Shards are opened lazily and kept
    open in a small LRU, so a cache of thousands of shards does not exhaust file handles.
    """

    def __init__(self, cache_dir: str | Path, expect: dict[str, Any] | None = None, max_open_shards: int = 128):
        self.cache_dir = Path(cache_dir).expanduser()
        manifest = read_manifest(self.cache_dir) if self.cache_dir.is_dir() else None
        if manifest is None:
            raise DistillError(f"no teacher cache at {self.cache_dir}: run distill-cache first")
        self.cache_format = format_of(manifest, self.cache_dir)  # fp16 | compact | sampled; others refused
        self.manifest = manifest
        self._check_expect(expect or {})
        missing = missing_shards(self.cache_dir, manifest)
        if missing:
            total = len(all_shards(manifest))
            raise DistillError(
                f"teacher cache {self.cache_dir} is incomplete: {len(missing)} of {total} shards are "
                "missing (rerun distill-cache to finish it)"
            )
        self.value_dtype, self.index_dtype = np.dtype(manifest["value_dtype"]), np.dtype(manifest["index_dtype"])
        self.widths = stored_widths(manifest)  # last dimension of a shard's two arrays
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _check_expect(self, expect: dict[str, Any]) -> None:
        m = self.manifest
        for key, want in expect.items():
            if key == "num_rows":
                for split, rows in want.items():
                    have = m["splits"].get(split, {}).get("num_rows", 0)
                    if have < rows:
                        what = "no" if split not in m["splits"] else f"{have}"
                        raise DistillError(
                            f"teacher cache {self.cache_dir} was built for different data ({what} {split} rows, "
                            f"{rows} needed); rebuild it with distill-cache"
                        )
                continue
            if key not in m and key not in IDENTITY_FIELDS:
                raise ValueError(f"unknown teacher cache field {key!r}")
            if m.get(key) != want:
                meaning = _FIELD_MEANING.get(key, "settings")
                what = {
                    "data": "different data",
                    "tokenizer": "a different tokenizer",
                    "teacher": "a different teacher",
                    "chat": "another chat template or loss mask (data.chat_template, data.train_on, data.packing)",
                }.get(meaning, "different settings")
                raise DistillError(
                    f"teacher cache {self.cache_dir} was built for {what} ({key} {m.get(key)!r}, "
                    f"expected {want!r}); rebuild it with distill-cache"
                )

    # -- properties -------------------------------------------------------------
    @property
    def top_k(self) -> int:
        return self.manifest["top_k"]

    @property
    def temperature(self) -> float:
        return self.manifest["temperature"]

    @property
    def sampled(self) -> bool:
        """Its entries are N draws from the teacher (``teacher.cache_mode=sample``), not the top-k."""
        return self.cache_format == SAMPLED

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def seq_len(self) -> int:
        return self.manifest["seq_len"]

    @property
    def bytes_per_token(self) -> float:
        if self.cache_format != "fp16":
            return self.manifest["bytes_per_token"]  # measured by the writer
        return bytes_per_token(self.top_k, self.vocab_size)

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def num_rows(self, split: str = "train") -> int:
        return self.manifest["splits"][split]["num_rows"]

    # -- reading ----------------------------------------------------------------
    def _shard(self, split: str, shard: int) -> tuple[np.ndarray, np.ndarray]:
        key = (split, shard)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        values_path, indices_path = shard_paths(self.cache_dir, split, shard)
        values, indices = np.load(values_path, mmap_mode="r"), np.load(indices_path, mmap_mode="r")
        info, m = self.manifest["splits"][split], self.manifest
        rows = min(m["shard_rows"], info["num_rows"] - shard * m["shard_rows"])
        shape = (rows, m["seq_len"], self.widths[0])
        if (values.shape, indices.shape, values.dtype, indices.dtype) != (
            shape,
            (*shape[:2], self.widths[1]),
            self.value_dtype,
            self.index_dtype,
        ):
            raise DistillError(
                f"teacher cache {self.cache_dir} has a damaged shard {values_path.name} "
                f"(shape {values.shape}, expected {shape}); delete it and rerun distill-cache"
            )
        self._open[key] = (values, indices)
        if len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return values, indices

    def lookup(
        self, rows: Tensor | np.ndarray | list[int], split: str = "train", device: torch.device | str | None = None
    ) -> SparseTeacher:
        """Teacher outputs of packed rows (any order, any shards): logprobs float32, indices long,
        both ``[B, seq_len, k]``. With ``device``, the narrow arrays of ``gather`` travel and are
        widened there (2-4x less host-to-device traffic)."""
        values, indices = self.gather(rows, split)
        values, indices = torch.from_numpy(values), torch.from_numpy(indices)
        if device is not None and torch.device(device).type != "cpu":
            values = values.pin_memory().to(device, non_blocking=True)
            indices = indices.pin_memory().to(device, non_blocking=True)
        return SparseTeacher(values.float(), indices.long())

    def gather(self, rows: Tensor | np.ndarray | list[int], split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """The top-k of packed rows as (values, narrow-int indices) ``[B, seq_len, k]``, best first: one
        fancy-indexed read per shard touched, no per-row Python loop. The fp16 format gives its stored
        arrays; the compact one's byte records are decoded for the whole batch at once (float32 values)."""
        if split not in self.manifest["splits"]:
            raise DistillError(
                f"teacher cache {self.cache_dir} has no {split!r} split (it has "
                f"{', '.join(self.splits) or 'none'}); rebuild it with distill-cache"
            )
        r = rows.detach().cpu().numpy() if isinstance(rows, Tensor) else np.asarray(rows)
        r = r.astype(np.int64, copy=False).reshape(-1)
        n = self.num_rows(split)
        if r.size and (r.min() < 0 or r.max() >= n):
            bad = int(r.max() if r.max() >= n else r.min())
            raise IndexError(f"row {bad} is outside the teacher cache's {split} split ({n} rows)")
        values = np.empty((r.size, self.seq_len, self.widths[0]), self.value_dtype)
        indices = np.empty((r.size, self.seq_len, self.widths[1]), self.index_dtype)
        shard_of, offset = np.divmod(r, self.manifest["shard_rows"])
        for shard in np.unique(shard_of):
            pos = np.flatnonzero(shard_of == shard)
            pos = pos[np.argsort(offset[pos], kind="stable")]  # read each shard front to back
            v, i = self._shard(split, int(shard))
            values[pos] = v[offset[pos]]
            indices[pos] = i[offset[pos]]
        if self.cache_format == "compact":
            return compact.decode(values, indices, self.top_k, self.vocab_size, index_dtype_for(self.vocab_size))
        if self.sampled:  # counts -> log of the empirical distribution (float32, padded slots finite)
            return to_logprobs(values, self.top_k), indices
        return values, indices

    def __getstate__(self) -> dict:
        # Memory maps do not pickle (DDP spawn, dataloader workers); reopen lazily instead.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


class CachedTeacher:
    """What the training module holds instead of a teacher model: row indices in,
    ``SparseTeacher`` out. Deliberately not an ``nn.Module``: it has no parameters, nothing
    to move, checkpoint or optimize."""

    def __init__(self, cache: TeacherCache, read_top_k: int | None = None):
        self.cache = cache
        # Entries are stored best first, so the first k of a top-64 cache are exactly a top-k cache:
        # one cache serves a sweep over k.
        if cache.sampled and read_top_k not in (None, cache.top_k):
            raise DistillError(
                f"teacher.read_top_k={read_top_k} reads a top-k cache, but {cache.cache_dir} holds {cache.top_k} "
                "sampled tokens per position (teacher.cache_mode=sample; the first k of them are no sample): "
                "leave teacher.read_top_k unset"
            )
        if read_top_k is not None and not 1 <= read_top_k <= cache.top_k:
            raise DistillError(
                f"teacher.read_top_k must be between 1 and the cache's top_k {cache.top_k} (got {read_top_k})"
            )
        self.read_top_k = read_top_k

    @property
    def top_k(self) -> int:
        return self.read_top_k or self.cache.top_k

    @property
    def temperature(self) -> float:
        return self.cache.temperature

    model = None  # no weights: nothing to move, shard or run
    scores_new_tokens = False  # it knows the rows it was written for, not tokens a student samples

    def scores(self, input_ids: Tensor, rows: Tensor, objective, vocab_size: int, position_ids=None):
        """The same ``Outputs`` a live teacher gives, with the cache's top-k in place of logits (it was
        written over these very rows, packed positions included). A sampled cache checks the objective on
        every call (a loss schedule may switch a term on later): only unbiased terms may read it."""
        if self.cache.sampled:
            check_objective(objective, f"teacher cache {self.cache.cache_dir}")
        return Outputs(logits=self.outputs(rows, device=input_ids.device), vocab_size=vocab_size)

    def has_split(self, split: str) -> bool:
        return split in self.cache.manifest["splits"]

    def outputs(
        self, row_index: Tensor, split: str = "train", device: torch.device | str | None = None
    ) -> SparseTeacher:
        out = self.cache.lookup(row_index, split, device=device)
        if self.read_top_k and self.read_top_k < self.cache.top_k:
            out = SparseTeacher(out.logprobs[..., : self.read_top_k], out.indices[..., : self.read_top_k])
        return out
