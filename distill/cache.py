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


def text_fingerprint(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()[:16]


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
