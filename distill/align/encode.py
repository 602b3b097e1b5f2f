"""Tokenize text with character offsets, for alignment (``distill.align.spans``).

Only a fast tokenizer (Rust ``tokenizers``, a ``tokenizer.json``) reports which characters each
token covers; a slow (pure Python) one is refused in one line, before any work.

Documents are encoded as the data path packs them (``distill.data.packing``): each followed by its
tokenizer's EOS. The two tokenizers' EOS tokens then stand for the same event, "the document ends",
so each EOS is given one virtual character after its document: both sides' EOS tokens cover that
character, and the alignment pairs them as a span of their own. A document's characters keep their
offsets shifted by the documents and EOS characters before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.align.spans import MAX_SPAN_TOKENS, Alignment, align_offsets
from distill.errors import DistillError


@dataclass(frozen=True)
class Encoded:
    """One row: token ids, their [n, 2] character offsets, and which are special."""

    ids: np.ndarray
    offsets: np.ndarray
    special: np.ndarray


def require_offsets(tokenizer, role: str) -> None:
    """Refuse, in one line, a tokenizer that cannot report character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise DistillError(
            f"the {role} tokenizer ({type(tokenizer).__name__}) is a slow tokenizer without character offsets; "
            "cross-tokenizer distillation aligns tokens by character offsets and needs a fast tokenizer "
            "(a tokenizer.json, loaded with AutoTokenizer.from_pretrained(..., use_fast=True))"
        )


def require_eos(tokenizer, role: str) -> int:
    """The EOS id that separates documents; a tokenizer without one is refused in one line."""
    if tokenizer.eos_token_id is None:
        raise DistillError(
            f"the {role} tokenizer has no EOS token: documents cannot be separated (set eos_token on the tokenizer)"
        )
    return int(tokenizer.eos_token_id)


def structural_ids(tokenizer) -> set[int]:
    """The special tokens that mark structure (EOS, BOS, padding, a template's markers). UNK is not
    one of them: it stands for text the vocabulary cannot spell, and is aligned like any token."""
    return set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}


def encode_documents(tokenizer, documents: list[str], *, eos: bool = True, role: str = "this") -> Encoded:
    """The documents' tokens in a row, each document followed by EOS (when ``eos``)."""
    pieces = tokenizer(documents, add_special_tokens=False, return_offsets_mapping=True)
    eos_id = require_eos(tokenizer, role) if eos else None
    special_ids = np.asarray(sorted(structural_ids(tokenizer)), np.int64)
    ids, offsets, shift = [], [], 0
    for doc, doc_ids, doc_offsets in zip(documents, pieces["input_ids"], pieces["offset_mapping"]):
        ids.append(np.asarray(doc_ids, np.int64))
        offsets.append(np.asarray(doc_offsets, np.int64).reshape(-1, 2) + shift)
        shift += len(doc)
        if eos:
            ids.append(np.asarray([eos_id], np.int64))
            offsets.append(np.asarray([[shift, shift + 1]], np.int64))  # EOS's virtual character
            shift += 1
    ids_row = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return Encoded(
        ids_row, np.concatenate(offsets) if offsets else np.zeros((0, 2), np.int64), np.isin(ids_row, special_ids)
    )


def encode_ids(tokenizer, ids) -> tuple[str, Encoded]:
    """The text of tokens a model generated, and each token's characters in it (on-policy samples:
    the student's tokens are given, not re-tokenized, since a re-tokenization can differ from them).

    A token's end is the length of the decoded prefix that ends with it: the tokenizer's own
    decoder, so every spelling ('Ġ', '▁', byte pieces) is read as the tokenizer writes it. Decoding
    costs O(n²) token reads, fine for sampled completions (tens of tokens). A prefix that ends inside
    a multi-byte character decodes to replacement characters, so ends are capped by every later end:
    the byte tokens of one character then all end where it ends, as offsets from encoding do.
    Special tokens (an EOS closing the sample) are left out of the text: zero-width, in no span."""
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ends = np.array([len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)) for i in range(len(ids))], np.int64)
    ends = np.minimum.accumulate(ends[::-1])[::-1] if len(ends) else ends
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    special = np.isin(np.asarray(ids, np.int64), np.asarray(sorted(structural_ids(tokenizer)), np.int64))
    return text, Encoded(np.asarray(ids, np.int64), np.stack([starts, ends], -1).reshape(-1, 2), special)


def align_encoded(teacher: Encoded, student: Encoded, max_span_tokens: int = MAX_SPAN_TOKENS) -> Alignment:
    return align_offsets(
        teacher.ids,
        teacher.offsets,
        student.ids,
        student.offsets,
        teacher_special=teacher.special,
        student_special=student.special,
        max_span_tokens=max_span_tokens,
    )


def truncate(encoded: Encoded, length: int) -> Encoded:
    """The row's first ``length`` tokens (a sequence-length limit); what is cut is unaligned."""
    return Encoded(encoded.ids[:length], encoded.offsets[:length], encoded.special[:length])


class TextAligner:
    """Both tokenizers, checked once; aligns rows of documents (the builder over the pure functions)."""

    def __init__(self, teacher_tokenizer, student_tokenizer, max_span_tokens: int = MAX_SPAN_TOKENS):
        for tok, role in ((teacher_tokenizer, "teacher"), (student_tokenizer, "student")):
            require_offsets(tok, role)
            require_eos(tok, role)
        self.teacher, self.student = teacher_tokenizer, student_tokenizer
        self.max_span_tokens = max_span_tokens

    def encode(self, documents: list[str], *, teacher_len: int | None = None, student_len: int | None = None):
        """(teacher row, student row) for these documents, each cut to its length limit if given."""
        t = encode_documents(self.teacher, documents, role="teacher")
        s = encode_documents(self.student, documents, role="student")
        return (t if teacher_len is None else truncate(t, teacher_len)), (
            s if student_len is None else truncate(s, student_len)
        )

    def align(self, documents: list[str], **lengths) -> tuple[Encoded, Encoded, Alignment]:
        t, s = self.encode(documents, **lengths)
        return t, s, align_encoded(t, s, self.max_span_tokens)

    def align_student_ids(self, student_ids) -> tuple[Encoded, Encoded, Alignment]:
        """A row the student wrote (on-policy): its text re-tokenized for the teacher, then aligned."""
        text, s = encode_ids(self.student, student_ids)
        t = encode_documents(self.teacher, [text], eos=False)
        return t, s, align_encoded(t, s, self.max_span_tokens)
