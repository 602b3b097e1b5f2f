"""Sequence-level KD for a student with its own tokenizer: the teacher's continuations as text.

The student then reads that text in its own tokens (``distill.data.cross.CrossTokenizerData``),
aligned like any other text.
"""

from __future__ import annotations

import numpy as np

from distill.cache import fingerprint
from distill.data.datamodule import TextDataModule
from distill.data.sources import Document


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
