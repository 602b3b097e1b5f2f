"""Tokenizer-free metrics: bits per byte and per character, and top-1 agreement on aligned spans.

Perplexity is per token, so models with different tokenizers are not comparable by it: a model
whose tokens are longer sees fewer, harder tokens. Bits per byte divides the same quantity, the
text's total negative log-likelihood, by what every tokenizer shares: the text's UTF-8 bytes
(bits per character by its characters). Each token of the text is scored exactly once: the first
from the tokenizer's BOS (or EOS) as context, and a text longer than the model's window in windows
that overlap by one token, which serves only as context. No EOS is scored after the text: its
cost would differ between tokenizers and is not part of the text.

A tokenizer that does not reproduce the text (WordPiece lowercases and strips accents) scores a
different text; ``TextScore.lossless`` says whether decoding the tokens gives the text back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.align.batch import AlignedBatch
from distill.align.vocab import VocabMapping


@dataclass(frozen=True)
class TextScore:
    """A model's summed NLL over texts, and what it is divided by."""

    nll: float = 0.0  # nats, summed over the texts' tokens
    tokens: int = 0
    bytes: int = 0  # UTF-8 bytes of the texts
    chars: int = 0
    lossless: bool = True  # every text decodes back from its tokens

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(1, self.bytes)

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2) / max(1, self.chars)

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2) / max(1, self.tokens)

    def __add__(self, other: TextScore) -> TextScore:
        return TextScore(
            self.nll + other.nll,
            self.tokens + other.tokens,
            self.bytes + other.bytes,
            self.chars + other.chars,
            self.lossless and other.lossless,
        )


def context_id(tokenizer) -> int:
    """The token a text is predicted from: BOS where the tokenizer has one, else EOS (documents
    are packed after an EOS, ``distill.data.packing``)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither BOS nor EOS: nothing to predict a text's first token from")
    return int(token)


def windows(ids: list[int], context: int, max_length: int) -> list[list[int]]:
    """``[context, *ids]`` cut into windows of at most ``max_length`` tokens, each after the first
    starting with the previous window's last token: every id is a target exactly once."""
    seq, step = [context, *ids], max(1, max_length - 1)
    return [seq[i : i + step + 1] for i in range(0, max(1, len(seq) - 1), step)]


@torch.no_grad()
def score_text(
    model, tokenizer, text: str, *, max_length: int | None = None, vocab_size: int | None = None
) -> TextScore:
    """The model's summed NLL of ``text`` under its tokenizer (see the module doc); windows of at
    most ``max_length`` tokens (default: the model's ``max_position_embeddings``)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return TextScore(bytes=len(text.encode()), chars=len(text))
    max_length = max_length or getattr(model.config, "max_position_embeddings", None) or 2048
    chunks = windows(ids, context_id(tokenizer), max_length)
    width = max(len(c) for c in chunks)
    device = next(model.parameters()).device
    inputs = torch.full((len(chunks), width), int(chunks[0][0]), dtype=torch.long, device=device)
    targets = torch.full((len(chunks), width), -100, dtype=torch.long, device=device)
    for i, chunk in enumerate(chunks):  # right padding: a causal model's earlier positions never see it
        inputs[i, : len(chunk)] = torch.tensor(chunk)
        targets[i, : len(chunk) - 1] = torch.tensor(chunk[1:])
    logits = model(input_ids=inputs, use_cache=False).logits[..., : vocab_size or len(tokenizer)].float()
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    lossless = tokenizer.decode(ids) == text
    return TextScore(float(nll), len(ids), len(text.encode()), len(text), lossless)


def score_texts(model, tokenizer, texts: list[str], **kwargs) -> TextScore:
    total = TextScore()
    for text in texts:
        total = total + score_text(model, tokenizer, text, **kwargs)
    return total


@torch.no_grad()
def aligned_top1_agreement(
    student_logits: Tensor, teacher_logits: Tensor, batch: AlignedBatch, mapping: VocabMapping
) -> tuple[int, int]:
    """(agreements, positions): on aligned spans of one token each whose two tokens are the same
    string (the positions where both models predict the same thing), how often the teacher's most
    likely token, mapped into the student's vocabulary, is the student's most likely token."""
    to_student = torch.as_tensor(mapping.teacher_to_student, device=student_logits.device)
    t_first, s_first = batch.teacher.first_ids, batch.student.first_ids
    same = batch.one_to_one & (to_student[t_first] == s_first) & (batch.weight > 0)
    s_rows, t_rows = batch.student.rows[same], batch.teacher.rows[same]
    s_top = student_logits.reshape(-1, student_logits.shape[-1])[s_rows].argmax(-1)
    t_top = teacher_logits.reshape(-1, teacher_logits.shape[-1])[t_rows].argmax(-1)
    return int((to_student[t_top] == s_top).sum()), int(same.sum())
