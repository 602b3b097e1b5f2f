"""ALM: approximate likelihood matching across vocabularies (Minixhofer et al. 2025, "Universal
Cross-Tokenizer Distillation via Approximate Likelihood Matching").

Per aligned span of text (``distill.align``), each model's log-probability of the span's text under
teacher forcing: its first token's log-probability plus its later tokens' (the chain rule; the same
merge GOLD and ULD read, ``distill.losses.cross_vocab``), ``ℓ = log P(span text | context)``. The term
is the binary KL between the two "this text comes next" events::

    a = e^ℓ_t, b = e^ℓ_s:   a·(ℓ_t − ℓ_s) + (1 − a)·(log(1 − a) − log(1 − b))

It compares one number per span, which no tokenizer's split changes: where GOLD compares the
distributions over a span's first token by string (and two tokenizers that split text differently give
one string different meanings: ``experiments/cross-tokenizer``), ALM only asks the student to find the
observed text as likely as the teacher does. It says nothing about the alternatives; that is its price.
ℓ is divided by the binarization temperature τ (``loss.alm.binarization``, 1 by default; tokenkit's is
100) and kept ≤ −``EPS`` so that log(1 − e^ℓ) stays finite when a model is certain. ``loss.alm.chunks=words``
compares chunks between spaces instead of spans, each with the space after it (``word_chunks``: the
paper's debiasing, in the form of tokenkit's ``append_space`` chunks).

Written with torch autograd over the gathered rows, chunked in the forward only: autograd keeps every
chunk's float32 rows for the backward, [spans + later tokens, V] × 4 bytes in all (32 MiB at 2k spans of a
4k vocabulary; at a 128k vocabulary a hand-written backward as in the engine would be needed). Tested
against a plain per-span reference in ``tests/losses/test_cross_vocab.py`` (with the other
cross-vocabulary terms, whose fixtures it shares), word chunks in ``tests/losses/test_likelihood.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distill.align.batch import AlignedBatch, SideIndex

EPS = 1e-5  # ℓ ≤ −EPS: 1 − e^ℓ ≥ ~1e-5, so the log and its gradient stay finite (tokenkit's epsilon)
CHUNKS = ("spans", "words")  # loss.alm.chunks


@dataclass(frozen=True)
class WordBreaks:
    """The vocabulary flags word chunks read (``distill.align.vocab.space_flags``), as bool tensors."""

    teacher_space: Tensor  # [Vt]: the token's text begins with a space
    teacher_white_end: Tensor  # [Vt]: the token's text ends in whitespace
    student_space: Tensor  # [Vs]

    @classmethod
    def of(cls, teacher_tokenizer, student_tokenizer) -> WordBreaks:
        from distill.align.vocab import space_flags

        (t_space, t_white), (s_space, _) = space_flags(teacher_tokenizer), space_flags(student_tokenizer)
        return cls(torch.from_numpy(t_space), torch.from_numpy(t_white), torch.from_numpy(s_space))


def span_logprobs(rows_of, side: SideIndex, temperature: float, chunk: int = 1024) -> Tensor:
    """[K] each span's log-probability of its text: the first token's plus the later tokens' log-probs,
    float32, differentiable through ``rows_of(rows) -> [n, V] logits``."""
    first = _token_logprobs(rows_of, side.rows, side.first_ids, temperature, chunk)
    later = _token_logprobs(rows_of, side.extra_rows, side.extra_ids, temperature, chunk)
    return first.index_add(0, side.extra_span, later)


def _token_logprobs(rows_of, rows: Tensor, ids: Tensor, T: float, chunk: int) -> Tensor:
    parts = [torch.zeros(0, device=rows.device)]
    for i in range(0, len(rows), chunk):
        x = rows_of(rows[i : i + chunk]).float() / T
        parts.append(x.gather(-1, ids[i : i + chunk, None]).squeeze(-1) - torch.logsumexp(x, dim=-1))
    return torch.cat(parts)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x < 0, stable at both ends."""
    return torch.where(x < -0.6931, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def binary_kl(lt: Tensor, ls: Tensor) -> Tensor:
    """KL(Bernoulli(e^lt) ‖ Bernoulli(e^ls)) per entry, from log-probabilities (clamped at −EPS)."""
    lt, ls = lt.clamp_max(-EPS), ls.clamp_max(-EPS)
    a = lt.exp()
    return a * (lt - ls) + (1 - a) * (log1mexp(lt) - log1mexp(ls))


def word_chunks(aligned: AlignedBatch, breaks: WordBreaks) -> tuple[Tensor, Tensor]:
    """(chunk [K] long, closing span [C] long): each span's word chunk (−1: in none), and each chunk's last span.

    A word boundary is a shared boundary where the text goes on with a space after a character that is
    not whitespace: every tokenizer here must cut there (GPT-2's and Llama 3's split patterns and
    SentencePiece's '▁' all start a piece at such a space), so "a boundary here" tells neither model
    anything the text does not. A chunk runs from one word boundary to the next over spans that follow
    each other on both sides; the first stretch of a row, a stretch broken by a span left out of the
    alignment, and the stretch a row ends in (no boundary closes it) are in no chunk."""
    t, s = aligned.teacher, aligned.student
    k = len(t.rows)
    follows = (t.rows[1:] == t.end_rows[:-1]) & (s.rows[1:] == s.end_rows[:-1])  # span i + 1 right after span i
    space = breaks.teacher_space.to(t.rows.device)
    white = breaks.teacher_white_end.to(t.rows.device)
    closes = follows & space[t.first_ids[1:]] & ~white[t.last_ids[:-1]]  # a word boundary after span i
    falses = torch.zeros(min(k, 1), dtype=torch.bool, device=t.rows.device)
    chunk = torch.cumsum(torch.cat([falses, closes]).long(), 0) - 1  # −1 before a row's first boundary
    ends = torch.cat([closes, falses])
    count = int(chunk.max()) + 1 if k else 0
    ok = torch.zeros(count + 1, dtype=torch.bool, device=t.rows.device)  # shifted by one: index 0 is chunk −1
    ok[chunk[ends] + 1] = True  # closed by a word boundary
    gap = (chunk[1:] == chunk[:-1]) & ~follows  # two spans of one chunk that do not follow each other
    ok[chunk[:-1][gap] + 1] = False
    ok[0] = False
    chunk = torch.where(ok[chunk + 1], chunk, torch.full_like(chunk, -1))
    closing = torch.full((count,), -1, dtype=torch.long, device=t.rows.device)
    closing[chunk[ends & (chunk >= 0)]] = torch.nonzero(ends & (chunk >= 0)).squeeze(-1)
    return chunk, closing


def space_logprobs(rows_of, rows: Tensor, space: Tensor, T: float) -> Tensor:
    """[n] log P(the next token's text begins with a space) at each row."""
    x = rows_of(rows).float() / T
    return torch.logsumexp(x.masked_fill(~space[: x.shape[-1]], float("-inf")), -1) - torch.logsumexp(x, -1)


def chunk_logprobs(rows_of, side: SideIndex, chunk: Tensor, closing: Tensor, space: Tensor, T: float) -> Tensor:
    """[C] each word chunk's log-probability: its spans' (``span_logprobs``) and then a space's."""
    spans = span_logprobs(rows_of, side, T)
    keep = chunk >= 0
    total = torch.zeros(len(closing), device=spans.device).index_add(0, chunk[keep], spans[keep])
    valid = closing >= 0
    then_space = space_logprobs(rows_of, side.end_rows[closing[valid]], space.to(spans.device), T)
    return total[valid] + then_space


def alm_loss(
    student_rows,
    teacher_rows,
    aligned: AlignedBatch,
    temperature: float = 1.0,
    breaks: WordBreaks | None = None,
    binarization: float = 1.0,
) -> Tensor:
    """Mean over the spans (by ``aligned.weight``) of the binary KL between the teacher's and the
    student's likelihood of each span's text, × T² like every divergence here. ``student_rows(rows)``
    and ``teacher_rows(rows)``: the two models' logits of those flattened rows (the teacher's without
    gradient; a cached teacher's made dense, ``distill.losses.cross_vocab.logit_rows``).

    ``breaks`` (``loss.alm.chunks=words``): over word chunks instead of spans (``word_chunks``), each
    chunk's likelihood that of its text *followed by a space*. Both models then score one event, "this
    text, then a space, comes next", which neither tokenizer's cuts bias: the chunk starts and ends where
    every tokenizer cuts, and the space that closes it is what makes its end a cut (the paper's
    debiasing asks for chunks whose two tokenizations end alike; this is a form of it that needs no
    precomputed pair table). A chunk weighs as its least-weighted span."""
    T = temperature
    if breaks is None:
        with torch.no_grad():
            lt = span_logprobs(teacher_rows, aligned.teacher, T)
        ls = span_logprobs(student_rows, aligned.student, T)
        w = aligned.weight.to(ls.device, torch.float32)
    else:
        chunk, closing = word_chunks(aligned, breaks)
        with torch.no_grad():
            lt = chunk_logprobs(teacher_rows, aligned.teacher, chunk, closing, breaks.teacher_space, T)
        ls = chunk_logprobs(student_rows, aligned.student, chunk, closing, breaks.student_space, T)
        keep = chunk >= 0
        span_w = aligned.weight.to(ls.device, torch.float32)
        w = torch.ones(len(closing), device=ls.device).scatter_reduce(0, chunk[keep], span_w[keep], "amin")
        w = w[closing >= 0]
    return (binary_kl(lt / binarization, ls / binarization) * w).sum() / w.sum().clamp_min(1.0) * T**2
