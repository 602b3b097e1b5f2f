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

Several teachers (``teachers=[...]``) whose tokenizers differ add *views*: each further tokenizer's
tokens of the same row text (cut at the row's edges as the student's are), aligned to the student's
row, in ``extras["views"]`` (a list of ``(inputs, AlignedBatch)``), so each teacher is aligned with the
student on its own. Then the student may also share the first teacher's tokenizer (``student_tokenizer
=None``): its rows are the packed rows themselves, exactly as without views.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from distill.align.batch import collate
from distill.align.encode import Encoded, TextAligner, align_encoded, encode_documents, require_eos, require_offsets
from distill.align.spans import AlignmentStats
from distill.cache import cached_dir, fingerprint
from distill.data.sampler import data_shard, eval_loader, train_loader
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


@dataclass(frozen=True)
class View:
    """A further teacher tokenizer's stream (several teachers), its rows padded to ``length`` inputs."""

    stream: Encoded
    length: int
    pad_id: int


def cut(stream: Encoded, lo: int, hi: int) -> Encoded:
    return Encoded(stream.ids[lo:hi], stream.offsets[lo:hi], stream.special[lo:hi])


def padded(ids: np.ndarray, length: int, pad_id: int) -> torch.Tensor:
    """``ids`` right-padded with ``pad_id`` (or cut) to ``length``."""
    row = torch.full((length,), pad_id, dtype=torch.long)
    row[: min(length, len(ids))] = torch.from_numpy(ids[:length].astype(np.int64))
    return row


class AlignedRows(Dataset):
    """Teacher row ``i`` and the student's tokens of its text, aligned: ``(student inputs, targets,
    i, {"teacher_inputs", "alignment"[, "views"]})``; student rows right-padded to ``student_len``
    inputs. ``student=None``: the student reads the teacher's rows (it shares that tokenizer; only
    ``views`` differ)."""

    def __init__(
        self, teacher_blocks, teacher: Encoded, student: Encoded | None, student_len: int, pad_id: int, views=()
    ):
        self.blocks, self.teacher = teacher_blocks, teacher
        self.student = teacher if student is None else student
        self.width = teacher_blocks.shape[1]
        self.student_len, self.pad_id, self.views = student_len, pad_id, list(views)
        spans = row_spans(teacher.offsets, len(teacher_blocks), self.width)
        if student is None:  # exactly the packed rows (tokens sharing a character at a row's edge stay apart)
            starts = np.arange(len(teacher_blocks)) * self.width
            self.ranges = np.stack([starts, starts + self.width], -1)
        else:
            self.ranges = tokens_within(student.offsets, spans)
        self.view_ranges = [tokens_within(v.stream.offsets, spans) for v in self.views]

    def __len__(self) -> int:
        return len(self.blocks)

    def rows(self, i: int) -> tuple[Encoded, Encoded]:
        lo, hi = self.ranges[i]
        hi = min(hi, lo + self.student_len + 1)  # a longer row is cut (its tail is unaligned)
        return cut(self.teacher, i * self.width, (i + 1) * self.width), cut(self.student, lo, hi)

    def view_rows(self, i: int) -> list[Encoded]:
        """Each view's tokens of row ``i``'s text (cut to its length: the tail is unaligned)."""
        return [
            cut(v.stream, lo, min(hi, lo + v.length))
            for v, (lo, hi) in zip(self.views, (r[i] for r in self.view_ranges))
        ]

    def __getitem__(self, i: int):
        teacher, student = self.rows(i)
        inputs = padded(student.ids[:-1], self.student_len, self.pad_id)
        targets = padded(student.ids[1:], self.student_len, -100)
        teacher_inputs = torch.from_numpy(teacher.ids[:-1].astype(np.int64))
        extras = {"teacher_inputs": teacher_inputs, "alignment": align_encoded(teacher, student)}
        if self.views:  # a view's row holds its tokens as inputs: the teacher predicts the span after each
            views = self.view_rows(i)
            extras["views"] = [
                (padded(row.ids, v.length, v.pad_id), align_encoded(row, student)) for v, row in zip(self.views, views)
            ]
        return inputs, targets, i, extras


def collate_aligned(items: list) -> tuple:
    """Stack the rows, and the alignments into one ``AlignedBatch`` over the flattened logits rows
    (teacher rows of ``teacher_inputs``' width, student rows of the inputs' width); a span counts
    only where the student's predicting row has a target (not padding). Views likewise, each into
    ``(inputs [B, length], AlignedBatch)``."""
    alignments = [extras.pop("alignment") for *_, extras in items]
    views = [extras.pop("views", []) for *_, extras in items]
    inputs, targets, rows, extras = default_collate(items)
    mask = targets != -100
    extras["aligned"] = collate(alignments, extras["teacher_inputs"].shape[1], inputs.shape[1], student_mask=mask)
    if views[0]:
        extras["views"] = []
        for j in range(len(views[0])):
            ids = torch.stack([row[j][0] for row in views])
            extras["views"].append((ids, collate([row[j][1] for row in views], ids.shape[1], inputs.shape[1], mask)))
    return inputs, targets, rows, extras


class CrossTokenizerData(L.LightningDataModule):
    """The training data of a student with its own tokenizer, over the teacher's packed data ``base``
    (its documents, split, tokenizer and rows: what trains, caches and filters the teacher).

    ``views``: ``(key, tokenizer)`` of further teachers' tokenizers (several teachers), each aligned with
    the student's rows; ``student_tokenizer=None`` with views: the student shares the first teacher's."""

    def __init__(self, base, student_tokenizer, student_key: str, views: list[tuple[str, object]] = ()):
        super().__init__()
        self.shared = student_tokenizer is None
        self.base, self.tokenizer = base, base.tokenizer if self.shared else student_tokenizer
        self.tokenizer_key = base.tokenizer_key if self.shared else student_key
        self.aligner = TextAligner(base.tokenizer, self.tokenizer)  # fast tokenizers with EOS, or one line
        for _, tokenizer in views:  # each view's tokenizer too
            require_offsets(tokenizer, "teacher")
            require_eos(tokenizer, "teacher")
        self.view_specs = list(views)
        self.seq_len, self.batch_size, self.seed = base.seq_len, base.batch_size, base.seed
        self.num_workers = base.num_workers
        self.data_key = fingerprint("cross-tokenizer", base.data_key, self.tokenizer_key, *(k for k, _ in views))
        self.datasets: dict[str, AlignedRows] = {}
        self.stats: dict = {}

    @property
    def teacher_tokenizer(self):
        return self.base.tokenizer

    @property
    def view_tokenizers(self) -> list:
        return [tokenizer for _, tokenizer in self.view_specs]

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
        streams = {name: _load(path, name, self.shared) for name in ("train", "val")}
        blocks = {"train": self.base.train_blocks, "val": self.base.val_blocks}
        for split, (teacher, _) in streams.items():
            if not np.array_equal(teacher.ids[: blocks[split].size], np.asarray(blocks[split]).reshape(-1)):
                raise DistillError(f"the {split} rows do not match the teacher tokenizer's encoding of their documents")
        if self.shared:
            student_len = self.base.train_blocks.shape[1] - 1  # the packed rows' inputs
        else:
            longest = max(_longest(streams[s][0], streams[s][1], blocks[s]) for s in streams)
            student_len = max(8, -(-(longest - 1) // 8) * 8)  # inputs per student row, a multiple of 8
        views = {s: self._views(s, streams[s][0], blocks[s]) for s in streams}
        pad = pad_id(self.tokenizer)
        self.datasets = {s: AlignedRows(blocks[s], *streams[s], student_len, pad, views[s]) for s in streams}
        alignment = {s: alignment_stats(d, self.seed) for s, d in self.datasets.items()}
        self.stats = {**(getattr(self.base, "stats", None) or {}), "alignment": alignment}
        self.stats["alignment"]["student_row_tokens"] = student_len
        log.info("cross-tokenizer alignment (validation rows): %s", self.stats["alignment"]["val"]["summary"])

    def _views(self, split: str, teacher: Encoded, blocks) -> list[View]:
        """Each further tokenizer's stream of this split, its rows as long as the split's longest."""
        out = []
        for key, tokenizer in self.view_specs:
            path = cached_dir(
                self.base.cache_dir,
                "aligned",
                fingerprint("view-v1", self.base.data_key, key),
                self._view_into(tokenizer),
            )
            stream = _encoded(path / f"{split}.npz")
            length = max(8, -(-_longest(teacher, stream, blocks) // 8) * 8)
            out.append(View(stream, length, pad_id(tokenizer)))
        return out

    def _encode_into(self, tmp: Path) -> None:
        roles = [("teacher", self.base.tokenizer)] + ([] if self.shared else [("student", self.tokenizer)])
        for name, docs in (("train", self.base.train_docs), ("val", self.base.val_docs)):
            texts = [d.text for d in docs]
            for role, tok in roles:
                enc = encode_stream(tok, texts, role)
                np.savez(tmp / f"{name}.{role}.npz", ids=enc.ids, offsets=enc.offsets, special=enc.special)

    def _view_into(self, tokenizer):
        def write(tmp: Path) -> None:
            for name, docs in (("train", self.base.train_docs), ("val", self.base.val_docs)):
                enc = encode_stream(tokenizer, [d.text for d in docs], "teacher")
                np.savez(tmp / f"{name}.npz", ids=enc.ids, offsets=enc.offsets, special=enc.special)

        return write

    def train_dataloader(self):
        shard = data_shard(self.trainer)
        return train_loader(
            self.datasets["train"], self.batch_size, self.seed, self.num_workers, **shard, collate_fn=collate_aligned
        )

    def val_dataloader(self):
        return eval_loader(self.datasets["val"], self.batch_size, self.seed, self.num_workers, collate_aligned)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _encoded(file: Path) -> Encoded:
    with np.load(file) as z:
        return Encoded(z["ids"], z["offsets"], z["special"])


def _load(path: Path, split: str, shared: bool = False) -> tuple[Encoded, Encoded | None]:
    teacher = _encoded(path / f"{split}.teacher.npz")
    return teacher, None if shared else _encoded(path / f"{split}.student.npz")


def _longest(teacher: Encoded, student: Encoded, blocks) -> int:
    """The most student tokens any row's text holds."""
    if not len(blocks):
        return 0
    ranges = tokens_within(student.offsets, row_spans(teacher.offsets, len(blocks), blocks.shape[1]))
    return int((ranges[:, 1] - ranges[:, 0]).max())


def alignment_stats(dataset: AlignedRows, seed: int, limit: int = STATS_ROWS) -> dict:
    """What the alignment distils and leaves out, over the split's rows (at most ``limit``, drawn
    with ``seed``), as numbers and one line; each view's likewise (``views``)."""
    order = np.random.default_rng(seed).permutation(len(dataset))[:limit]
    totals = [AlignmentStats() for _ in range(1 + len(dataset.views))]
    for i in np.sort(order):
        teacher, student = dataset.rows(int(i))
        sides = [teacher, *dataset.view_rows(int(i))] if dataset.views else [teacher]
        totals = [total + align_encoded(side, student).stats for total, side in zip(totals, sides)]

    def described(total: AlignmentStats) -> dict:
        return {"rows": len(order), **json.loads(json.dumps(total.__dict__)), "summary": total.summary()}

    out = described(totals[0])
    if dataset.views:
        out["views"] = [described(total) for total in totals[1:]]
    return out
