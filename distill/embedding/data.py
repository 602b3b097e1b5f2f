"""Sentences for an encoder: docstring paragraphs -> seeded split by file -> token ids -> padded batches.

Unlike the causal path there is nothing to pack: every text is one example, padded to the longest
in its batch, with an attention mask that pooling and the hidden-state loss both honour.
"""

from __future__ import annotations

import logging
import random
import re

import lightning as L
import torch
from torch.utils.data import DataLoader

from distill.data.sources import Document, docstring_documents
from distill.data.split import split_documents
from distill.errors import DistillError

log = logging.getLogger(__name__)


def paragraphs(text: str, min_chars: int = 32) -> list[str]:
    """Blank-line separated paragraphs, whitespace collapsed, at least ``min_chars`` long: the
    sentence-sized unit of a docstring (a summary line, an argument list, an example)."""
    parts = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return [p for p in parts if len(p) >= min_chars]


def group_of(doc_id: str) -> str:
    """What the split is keyed on: the source file (``path::name``), or the id itself."""
    return doc_id.split("::", 1)[0]


def split_texts(docs: list[Document], val_fraction: float, seed: int, min_chars: int) -> tuple[list[str], list[str]]:
    """Paragraphs of the training and held-out documents; a file's docstrings are all on one side,
    so near-identical docstrings of one module never sit on both."""
    groups = sorted({group_of(d.id) for d in docs})
    _, held_out = split_documents([Document(g, "") for g in groups], val_fraction, seed)
    held = {d.id for d in held_out}
    train, val = [], []
    for d in docs:
        (val if group_of(d.id) in held else train).extend(paragraphs(d.text, min_chars))
    if not train or not val:
        raise DistillError(
            f"the split left {len(train)} training and {len(val)} held-out texts: use more data.max_docs"
        )
    return train, val


def _sample(texts: list[str], limit: int | None, seed: int) -> list[str]:
    if limit is None or limit >= len(texts):
        return texts
    return random.Random(seed).sample(texts, limit)


class SentenceDataModule(L.LightningDataModule):
    """Training and held-out texts of the docstring corpus as padded ``(input_ids, attention_mask)``."""

    def __init__(
        self,
        max_docs: int | None = None,
        min_chars: int = 32,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        max_train_texts: int | None = None,
        max_val_texts: int | None = None,
        num_workers: int = 0,
        filters: dict | None = None,
    ):
        super().__init__()
        if filters:  # the data/filters group composes into every data preset
            raise DistillError(f"data/filters {sorted(filters)} filter the causal corpus; sentence data takes none")
        if max_length < 2 or batch_size < 1:
            raise DistillError(
                f"data.max_length must be >= 2 and data.batch_size >= 1 (got {max_length}, {batch_size})"
            )
        self.max_docs, self.min_chars, self.max_length = max_docs, min_chars, max_length
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_fraction, self.seed = val_fraction, seed
        self.max_train_texts, self.max_val_texts = max_train_texts, max_val_texts
        self.tokenizer = None
        self.train_texts: list[str] = []
        self.val_texts: list[str] = []

    def load_documents(self) -> None:
        docs = docstring_documents(self.max_docs, min_chars=self.min_chars)
        train, val = split_texts(docs, self.val_fraction, self.seed, self.min_chars)
        self.train_texts = _sample(train, self.max_train_texts, self.seed)
        self.val_texts = _sample(val, self.max_val_texts, self.seed)
        log.info(
            "docstring corpus: %d documents -> %d training and %d held-out texts",
            len(docs),
            len(self.train_texts),
            len(self.val_texts),
        )

    def use_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise DistillError("the sentence data needs the teacher's tokenizer: call use_tokenizer first")
        if not self.train_texts:
            self.load_documents()
        if not hasattr(self, "train_ids"):
            self.train_ids = self._tokenize(self.train_texts)
            self.val_ids = self._tokenize(self.val_texts)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def collate(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_ids,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            drop_last=len(self.train_ids) > self.batch_size,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_ids, batch_size=self.eval_batch_size, collate_fn=self.collate, num_workers=self.num_workers
        )

    def tokens(self, split: str = "train") -> int:
        return sum(len(r) for r in (self.train_ids if split == "train" else self.val_ids))
