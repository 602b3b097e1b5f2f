"""The teacher cache's files: the manifest, its format versions, and where each shard lives.

Shared by the reader (``distill.teacher.cache``) and the writer (``distill.teacher.cache_writer``).
Two on-disk formats, chosen with ``teacher.cache_format`` and told apart by the manifest's
``format_version`` (a reader refuses a version it does not know, in one line):

- version 1, ``fp16`` (the default): per token, k float16 log-probabilities and k token ids of the
  narrowest integer type, best first; ``bytes_per_token`` is that payload (256 at k=64, vocab <= 65,536).
- version 2, ``compact`` (``distill.teacher.compact``): per token one value record and one index
  record of bytes (99 at k=64, vocab 4,096); ``bytes_per_token`` is measured once the cache is
  complete (the shard files' bytes over the tokens they hold), and the manifest's ``compact``
  block records the layout.
- version 3, ``sampled`` (``teacher.cache_mode=sample``, ``distill.teacher.sampled``): per token, N
  slots of (count of the narrowest unsigned type, token id of the narrowest integer type), N draws from
  the teacher in all; ``top_k`` is N (the slots), ``samples`` and ``sample_seed`` say how they were drawn,
  ``bytes_per_token`` is measured as for ``compact`` (3 N + headers at vocab <= 65,536).

Either way a shard is two ``.npy`` files (``values``, ``indices``) written under temporary names and
renamed indices first, values last: a shard whose two files exist is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from distill.errors import DistillError
from distill.teacher import compact, sampled

MANIFEST = "manifest.json"
VALUE_DTYPE = "float16"
FORMAT_VERSIONS = {"fp16": 1, "compact": 2}  # teacher.cache_format -> the manifest's format_version
SAMPLED = "sampled"  # the layout of teacher.cache_mode=sample (its own: ids + counts)
VERSIONS = {**FORMAT_VERSIONS, SAMPLED: 3}  # every layout this code reads
FORMAT_VERSION = FORMAT_VERSIONS["fp16"]
# Fields that define a cache's content: a writer refuses to resume into a cache whose
# manifest differs in any of them (``extra`` is free-form and may change).
IDENTITY_FIELDS = (
    "format_version",
    "teacher_key",
    "tokenizer_key",
    "data_key",
    "chat_key",
    "top_k",
    "temperature",
    "vocab_size",
    "seq_len",
    "shard_rows",
    "value_dtype",
    "index_dtype",
    "splits",
    "sample_seed",
)


def index_dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest integer type holding every token id ``0 .. vocab_size - 1``."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def bytes_per_token(top_k: int, vocab_size: int, cache_format: str = "fp16") -> int:
    """The payload per token (without the files' headers)."""
    if cache_format == "compact":
        return sum(compact.record_bytes(top_k, vocab_size))
    if cache_format == SAMPLED:  # top_k is the number of draws N: N slots of (count, id)
        return top_k * (sampled.count_dtype(top_k).itemsize + index_dtype_for(vocab_size).itemsize)
    return top_k * (np.dtype(VALUE_DTYPE).itemsize + index_dtype_for(vocab_size).itemsize)


def num_shards(num_rows: int, shard_rows: int) -> int:
    return -(-num_rows // shard_rows)


def shard_paths(cache_dir: str | Path, split: str, shard: int) -> tuple[Path, Path]:
    """(values, indices) file paths of one shard."""
    base = Path(cache_dir) / split / f"shard-{shard:05d}"
    return base.with_name(base.name + ".values.npy"), base.with_name(base.name + ".indices.npy")


def shard_done(cache_dir: str | Path, split: str, shard: int) -> bool:
    return all(p.is_file() for p in shard_paths(cache_dir, split, shard))


def all_shards(manifest: dict) -> list[tuple[str, int]]:
    return [(split, s) for split, info in manifest["splits"].items() for s in range(info["num_shards"])]


def missing_shards(cache_dir: str | Path, manifest: dict) -> list[tuple[str, int]]:
    return [(split, s) for split, s in all_shards(manifest) if not shard_done(cache_dir, split, s)]


def build_manifest(
    *,
    keys: dict,
    top_k: int,
    temperature: float,
    vocab_size: int,
    seq_len: int,
    split_rows: dict[str, int],
    shard_rows: int,
    extra: dict | None = None,
    cache_format: str = "fp16",
    sample_seed: int | None = None,
) -> dict:
    """The manifest of a cache; ``cache_format`` ``sampled`` is ``teacher.cache_mode=sample``, with
    ``top_k`` the number of draws per token."""
    missing = {"teacher_key", "tokenizer_key", "data_key"} - set(keys)
    if missing:
        raise ValueError(f"keys must name {sorted(missing)}")
    if cache_format not in VERSIONS:
        raise DistillError(f"teacher.cache_format must be one of {', '.join(FORMAT_VERSIONS)} (got {cache_format!r})")
    packed = cache_format == "compact"  # byte records: their dtypes are uint8, their layout below
    is_sampled = cache_format == SAMPLED
    manifest = {
        "format_version": VERSIONS[cache_format],
        "cache_format": cache_format,
        "teacher_key": str(keys["teacher_key"]),
        "tokenizer_key": str(keys["tokenizer_key"]),
        "data_key": str(keys["data_key"]),
        # conversations: the chat template, the turns trained on and the packing (data/chat/datamodule.py)
        "chat_key": keys.get("chat_key"),
        "top_k": int(top_k),
        "temperature": float(temperature),
        "vocab_size": int(vocab_size),
        "seq_len": int(seq_len),
        "shard_rows": int(shard_rows),
        "cache_mode": "sample" if is_sampled else "topk",
        "samples": int(top_k) if is_sampled else None,
        "sample_seed": int(sample_seed or 0) if is_sampled else None,
        "value_dtype": "uint8" if packed else sampled.count_dtype(top_k).name if is_sampled else VALUE_DTYPE,
        "index_dtype": "uint8" if packed else index_dtype_for(vocab_size).name,
        "bytes_per_token": bytes_per_token(top_k, vocab_size, cache_format),
        "splits": {
            name: {"num_rows": int(n), "num_shards": num_shards(n, shard_rows)} for name, n in split_rows.items()
        },
        "extra": dict(extra or {}),
    }
    if packed:
        manifest["compact"] = compact.layout(top_k, vocab_size)
    return manifest


def format_of(manifest: dict, cache_dir: str | Path) -> str:
    """The cache's format (``fp16``, ``compact`` or ``sampled``) from its version; a version this code does
    not read is a one-line refusal."""
    version, known = manifest.get("format_version"), sorted(VERSIONS.values())
    for name, v in VERSIONS.items():
        if version == v and type(version) is int:
            return name
    if isinstance(version, int) and version > known[-1]:
        raise DistillError(
            f"teacher cache {cache_dir} has format version {version}, newer than this distill reads "
            f"({', '.join(map(str, known))}): update distill, or rebuild the cache with distill-cache"
        )
    raise DistillError(
        f"teacher cache {cache_dir} has an unknown format version {version!r} (this distill reads "
        f"{', '.join(map(str, known))}): rebuild it with distill-cache"
    )


def stored_widths(manifest: dict) -> tuple[int, int]:
    """The last dimension of a shard's (values, indices) arrays."""
    if manifest["format_version"] == FORMAT_VERSIONS["compact"]:
        return compact.record_bytes(manifest["top_k"], manifest["vocab_size"])
    return manifest["top_k"], manifest["top_k"]


def encode_shard(manifest: dict, values: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The writer's (log-probabilities, ids) of one shard as the arrays its two files hold."""
    if manifest["format_version"] == FORMAT_VERSIONS["compact"]:
        return compact.encode(values, indices, manifest["vocab_size"])
    if manifest["format_version"] == VERSIONS[SAMPLED]:  # values are the counts
        return values.astype(manifest["value_dtype"]), indices.astype(manifest["index_dtype"], copy=False)
    return values.astype(VALUE_DTYPE, copy=False), indices.astype(manifest["index_dtype"], copy=False)


def measured_bytes_per_token(cache_dir: str | Path, manifest: dict) -> float:
    """The shard files' bytes (headers included) over the tokens they hold."""
    files = sum(p.stat().st_size for split, s in all_shards(manifest) for p in shard_paths(cache_dir, split, s))
    tokens = sum(info["num_rows"] for info in manifest["splits"].values()) * manifest["seq_len"]
    return round(files / max(1, tokens), 3)


def read_manifest(cache_dir: str | Path) -> dict | None:
    """The manifest, or None if there is none; a corrupt one is a user-facing error."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DistillError(
            f"teacher cache {cache_dir} has an unreadable {MANIFEST} ({e}); delete the directory "
            "and rerun distill-cache"
        ) from e


def write_manifest(cache_dir: str | Path, manifest: dict) -> None:
    """Atomic: a temp file in the same directory, then a rename."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".partial", dir=cache_dir)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cache_dir / MANIFEST)
