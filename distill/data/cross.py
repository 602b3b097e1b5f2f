"""A student with its own tokenizer: the teacher's packed rows, re-tokenized for the student and aligned.

Rows stay the teacher's (``distill.data.packing`` over the teacher's tokenizer), so a teacher cache
written over them serves any student tokenizer unchanged, and a live teacher sees exactly the rows
it would see with a same-vocabulary student. The student's row is its own tokens of the same
characters: the tokens that lie wholly inside the teacher row's text (a token cut by the row's edge
belongs to neither), right-padded to the longest such row. Both models thus read the same text at
every step, whatever their tokenizers, and a control with the student's tokenizer trains on it too.

Each split is encoded once by each tokenizer with character offsets (``distill.align.encode``, the
documents each followed by EOS exactly as packing joins them) and cached; the two rows of a batch
are aligned when the batch is built (``distill.align.spans``: a few numpy passes per row) and handed
to the loss as one ``AlignedBatch`` (``extras["aligned"]``) beside the teacher's inputs
(``extras["teacher_inputs"]``). What the alignment leaves out is counted (``alignment_stats``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from distill.align.batch import collate
from distill.align.encode import Encoded, TextAligner, align_encoded, encode_documents
from distill.align.spans import AlignmentStats
from distill.cache import cached_dir, fingerprint
from distill.data.datamodule import TextDataModule
from distill.data.sampler import data_shard, eval_loader, train_loader
from distill.data.sources import Document
from distill.errors import DistillError

log = logging.getLogger(__name__)

STATS_ROWS = 2048  # training rows whose alignment is counted at setup (all validation rows are)


def encode_stream(tokenizer, documents, role: str, batch_size: int = 256) -> Encoded:
    """The split's documents as one token stream with character offsets, each document followed by
    EOS (its one virtual character), a batch of documents at a time."""
    parts, shift, batch = [], 0, []

    def flush():
        nonlocal shift
        enc = encode_documents(tokenizer, batch, role=role)
        parts.append(Encoded(enc.ids, enc.offsets + shift, enc.special))
        shift += sum(len(d) + 1 for d in batch)  # each document's characters and its EOS character
        batch.clear()

    for doc in documents:
        batch.append(doc)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not parts:
        return Encoded(np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, bool))
    return Encoded(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "offsets", "special")))


def row_spans(offsets: np.ndarray, n_rows: int, row_tokens: int) -> np.ndarray:
    """[n_rows, 2] the characters [c0, c1) each packed row of ``row_tokens`` stream tokens covers."""
    rows = offsets[: n_rows * row_tokens].reshape(n_rows, row_tokens, 2)
    return np.stack([rows[..., 0].min(-1), rows[..., 1].max(-1)], -1)


def tokens_within(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """[n, 2] the stream tokens [lo, hi) wholly inside each character span [c0, c1)."""
    starts = np.maximum.accumulate(offsets[:, 0]) if len(offsets) else offsets[:, 0]
    ends = np.maximum.accumulate(offsets[:, 1]) if len(offsets) else offsets[:, 1]
    lo = np.searchsorted(starts, spans[:, 0], side="left")
    hi = np.searchsorted(ends, spans[:, 1], side="right")
    return np.stack([lo, np.maximum(lo, hi)], -1)


class AlignedRows(Dataset):
    """Teacher row ``i`` and the student's tokens of its text, aligned: ``(student inputs, targets,
    i, {"teacher_inputs", "alignment"})``; student rows right-padded to ``student_len`` inputs."""

    def __init__(self, teacher_blocks, teacher: Encoded, student: Encoded, student_len: int, pad_id: int):
        self.blocks, self.teacher, self.student = teacher_blocks, teacher, student
        self.width = teacher_blocks.shape[1]
        self.student_len, self.pad_id = student_len, pad_id
        self.ranges = tokens_within(student.offsets, row_spans(teacher.offsets, len(teacher_blocks), self.width))

    def __len__(self) -> int:
        return len(self.blocks)

    def rows(self, i: int) -> tuple[Encoded, Encoded]:
        t = slice(i * self.width, (i + 1) * self.width)
        lo, hi = self.ranges[i]
        s = slice(lo, min(hi, lo + self.student_len + 1))  # a longer row is cut (its tail is unaligned)
        teacher = Encoded(self.teacher.ids[t], self.teacher.offsets[t], self.teacher.special[t])
        return teacher, Encoded(self.student.ids[s], self.student.offsets[s], self.student.special[s])

    def __getitem__(self, i: int):
        teacher, student = self.rows(i)
        n = len(student.ids)
        inputs = torch.full((self.student_len,), self.pad_id, dtype=torch.long)
        targets = torch.full((self.student_len,), -100, dtype=torch.long)
        inputs[: max(0, n - 1)] = torch.from_numpy(student.ids[:-1])
        targets[: max(0, n - 1)] = torch.from_numpy(student.ids[1:])
        teacher_inputs = torch.from_numpy(teacher.ids[:-1].astype(np.int64))
        return inputs, targets, i, {"teacher_inputs": teacher_inputs, "alignment": align_encoded(teacher, student)}


def collate_aligned(items: list) -> tuple:
    """Stack the rows, and the alignments into one ``AlignedBatch`` over the flattened logits rows
    (teacher rows of ``teacher_inputs``' width, student rows of the inputs' width); a span counts
    only where the student's predicting row has a target (not padding)."""
    alignments = [extras.pop("alignment") for *_, extras in items]
    inputs, targets, rows, extras = default_collate(items)
    extras["aligned"] = collate(
        alignments, extras["teacher_inputs"].shape[1], inputs.shape[1], student_mask=targets != -100
    )
    return inputs, targets, rows, extras


class CrossTokenizerData(L.LightningDataModule):
    """The training data of a student with its own tokenizer, over the teacher's packed data ``base``
    (its documents, split, tokenizer and rows: what trains, caches and filters the teacher)."""

    def __init__(self, base, student_tokenizer, student_key: str):
        super().__init__()
        self.base, self.tokenizer, self.tokenizer_key = base, student_tokenizer, student_key
        self.aligner = TextAligner(base.tokenizer, student_tokenizer)  # fast tokenizers with EOS, or one line
        self.seq_len, self.batch_size, self.seed = base.seq_len, base.batch_size, base.seed
        self.num_workers = base.num_workers
        self.data_key = fingerprint("cross-tokenizer", base.data_key, student_key)
        self.datasets: dict[str, AlignedRows] = {}
        self.stats: dict = {}

    @property
    def teacher_tokenizer(self):
        return self.base.tokenizer

    @property
    def train_blocks(self):  # the rows (the teacher's), as every data module names them
        return self.base.train_blocks

    @property
    def val_blocks(self):
        return self.base.val_blocks

    @property
    def student_len(self) -> int:
        return self.datasets["train"].student_len

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.student_len

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.base.setup(stage)
        key = fingerprint("aligned-v1", self.base.data_key, self.base.tokenizer_key, self.tokenizer_key)
        path = cached_dir(self.base.cache_dir, "aligned", key, self._encode_into)
        streams = {name: _load(path, name) for name in ("train", "val")}
        blocks = {"train": self.base.train_blocks, "val": self.base.val_blocks}
        for split, (teacher, _) in streams.items():
            if not np.array_equal(teacher.ids[: blocks[split].size], np.asarray(blocks[split]).reshape(-1)):
                raise DistillError(f"the {split} rows do not match the teacher tokenizer's encoding of their documents")
        longest = max(_longest(streams[s][0], streams[s][1], blocks[s]) for s in streams)
        student_len = max(8, -(-(longest - 1) // 8) * 8)  # inputs per student row, a multiple of 8
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.datasets = {s: AlignedRows(blocks[s], *streams[s], student_len, pad) for s in streams}
        alignment = {s: alignment_stats(d, self.seed) for s, d in self.datasets.items()}
        self.stats = {**(getattr(self.base, "stats", None) or {}), "alignment": alignment}
        self.stats["alignment"]["student_row_tokens"] = student_len
        log.info("cross-tokenizer alignment (validation rows): %s", self.stats["alignment"]["val"]["summary"])

    def _encode_into(self, tmp: Path) -> None:
        for name, docs in (("train", self.base.train_docs), ("val", self.base.val_docs)):
            texts = [d.text for d in docs]
            for role, tok in (("teacher", self.base.tokenizer), ("student", self.tokenizer)):
                enc = encode_stream(tok, texts, role)
                np.savez(tmp / f"{name}.{role}.npz", ids=enc.ids, offsets=enc.offsets, special=enc.special)

    def train_dataloader(self):
        shard = data_shard(self.trainer)
        return train_loader(
            self.datasets["train"], self.batch_size, self.seed, self.num_workers, **shard, collate_fn=collate_aligned
        )

    def val_dataloader(self):
        return eval_loader(self.datasets["val"], self.batch_size, self.seed, self.num_workers, collate_aligned)


def _load(path: Path, split: str) -> tuple[Encoded, Encoded]:
    def one(role):
        with np.load(path / f"{split}.{role}.npz") as z:
            return Encoded(z["ids"], z["offsets"], z["special"])

    return one("teacher"), one("student")


def _longest(teacher: Encoded, student: Encoded, blocks) -> int:
    """The most student tokens any row's text holds."""
    if not len(blocks):
        return 0
    ranges = tokens_within(student.offsets, row_spans(teacher.offsets, len(blocks), blocks.shape[1]))
    return int((ranges[:, 1] - ranges[:, 0]).max())


def alignment_stats(dataset: AlignedRows, seed: int, limit: int = STATS_ROWS) -> dict:
    """What the alignment distils and leaves out, over the split's rows (at most ``limit``, drawn
    with ``seed``), as numbers and one line."""
    order = np.random.default_rng(seed).permutation(len(dataset))[:limit]
    total = AlignmentStats()
    for i in np.sort(order):
        total = total + align_encoded(*dataset.rows(int(i))).stats
    return {"rows": len(order), **json.loads(json.dumps(total.__dict__)), "summary": total.summary()}


def teacher_texts(rows: np.ndarray, targets: np.ndarray, tokenizer) -> list[str]:
    """Sequence-level KD's rows (a prompt from the corpus and the teacher's continuation, up to its
    first EOS; ``distill.data.seqkd``) as text, each up to its last written token."""
    texts = []
    for row, target in zip(rows, targets):
        written = np.flatnonzero(np.asarray(target) != -100)
        end = int(written[-1]) + 2 if len(written) else 0
        texts.append(tokenizer.decode(np.asarray(row[:end]).tolist(), skip_special_tokens=True))
    return texts


def seqkd_as_text(seqkd):
    """The teacher's continuations as documents in the teacher's packed rows, validated on the
    corpus's own validation documents: sequence-level KD for a student with its own tokenizer, whose
    rows are then this text in its tokens (``CrossTokenizerData``), aligned like any other text."""
    base = seqkd.base
    texts = teacher_texts(seqkd.train_blocks, seqkd.train_targets, base.tokenizer)
    dm = TextDataModule(
        source=lambda: [],
        seq_len=base.seq_len,
        batch_size=base.batch_size,
        seed=base.seed,
        max_val_blocks=base.max_val_blocks,
        cache_dir=base.cache_dir,
        num_workers=base.num_workers,
    )
    dm.train_docs = [Document(f"seqkd-{i}", text) for i, text in enumerate(texts) if text]
    dm.val_docs, dm.data_key = base.val_docs, fingerprint(seqkd.data_key, "as-text")
    dm.use_tokenizer(base.tokenizer_path)
    dm.setup()
    return dm
