"""Content-addressed cache for products such as tokenizers, packed data and teachers.

A product lives in ``<cache_dir>/<kind>/<key>/``; the key is a hash of what made it,
so a changed input gives a new entry and a rerun finds the old one. Entries are
built in a temporary sibling directory and renamed into place, so an interrupted
build never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


PARTIAL = ".partial"  # the suffix of every temporary file or dir that is renamed into place when complete


def partial_name(path: Path) -> Path:
    """``<name>.partial-<host>-<pid>``: unique per writer, and a leftover names the process that left it."""
    return path.with_name(f"{path.name}{PARTIAL}-{socket.gethostname()}-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file handle whose content replaces ``path`` only once it is complete: written to a
    temp file, flushed to disk and renamed. A crash or a full disk leaves the previous good file (or
    none), never half a file, and no temp file when the error is raised here."""
    path = Path(path)
    tmp = partial_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    with atomic_file(path) as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete directory ``tmp`` at ``final``; an older ``final`` is moved aside, not deleted,
    until the new one is in place, so there is no moment with neither."""
    old = partial_name(final.with_name(final.name + ".old"))
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def is_stale(name: str) -> bool:
    """A ``.partial-<host>-<pid>`` leftover whose writer is gone (same host, process not alive).
    Leftovers of other hosts (a shared file system) are left alone: their writer may be running."""
    m = re.search(re.escape(PARTIAL) + r"-(.+)-(\d+)(?:\.|$)", name)
    if m is None or m.group(1) != socket.gethostname():
        return False
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False  # alive


def clean_leftovers(root: str | Path) -> list[Path]:
    """Remove incomplete temporary files and dirs that killed writers left under ``root``; returns them."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob(f"*{PARTIAL}-*") if is_stale(p.name)]
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return found


def cached_dir(cache_dir: str | Path, kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_dir/kind/key``, calling ``build(tmp_dir)`` first if it is missing."""
    final = Path(cache_dir).expanduser() / kind / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final.parent)  # builds of this kind that a killed process never finished
    tmp = Path(tempfile.mkdtemp(prefix=partial_name(Path(f".{key}")).name + ".", dir=final.parent))
    try:
        build(tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():  # a concurrent run finishing first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
