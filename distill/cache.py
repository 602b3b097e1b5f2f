"""Content-addressed cache for products such as tokenizers, packed data and teachers.

A product lives in ``<cache_dir>/<kind>/<key>/``; the key is a hash of what made it,
so a changed input gives a new entry and a rerun finds the old one. Entries are
built in a temporary sibling directory and renamed into place, so an interrupted
build never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dicts are key-sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class TextHasher:
    """``text_fingerprint`` one text at a time (a stream split into two hashes in one pass)."""

    def __init__(self):
        self.h = hashlib.sha256()

    def add(self, text: str) -> None:
        self.h.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())

    def hexdigest(self) -> str:
        return self.h.hexdigest()[:16]


def text_fingerprint(texts: list[str]) -> str:
    h = TextHasher()
    for t in texts:
        h.add(t)
    return h.hexdigest()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temp file and rename, so a crash (or a rerun reading it) never sees half a file."""
    tmp = path.with_name(path.name + ".partial")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def cached_dir(cache_dir: str | Path, kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_dir/kind/key``, calling ``build(tmp_dir)`` first if it is missing."""
    final = Path(cache_dir).expanduser() / kind / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        build(tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():  # a concurrent run finishing first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
