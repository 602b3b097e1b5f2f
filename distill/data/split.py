"""Seeded train/validation split by document, so no document is in both."""

from __future__ import annotations

import hashlib
import random

from distill.data.sources import Document
from distill.errors import DistillError


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    if not 0 < val_fraction < 1:
        raise DistillError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if len(docs) < 2:
        raise DistillError(f"the corpus has {len(docs)} non-empty document(s); at least 2 are needed to split")
    order = sorted(docs, key=lambda d: d.id)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    return order[n_val:], order[:n_val]


def in_validation(doc_id: str, val_fraction: float, seed: int) -> bool:
    """The streaming split: a document is in validation when a seeded hash of its id falls below
    ``val_fraction``, decided one document at a time (``split_documents`` needs every id first)."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction
