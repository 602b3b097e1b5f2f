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
ℓ is divided by the binarization temperature 1 (the paper's τ, not exposed) and kept ≤ −``EPS`` so that
log(1 − e^ℓ) stays finite when a model is certain.

Written with torch autograd over the gathered rows, chunked in the forward only: autograd keeps every
chunk's float32 rows for the backward, [spans + later tokens, V] × 4 bytes in all (32 MiB at 2k spans of a
4k vocabulary; at a 128k vocabulary a hand-written backward as in the engine would be needed). Tested against a plain per-span reference in ``tests/losses/test_cross_vocab.py`` (with the other
cross-vocabulary terms, whose fixtures it shares).
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.align.batch import AlignedBatch, SideIndex

EPS = 1e-5  # ℓ ≤ −EPS: 1 − e^ℓ ≥ ~1e-5, so the log and its gradient stay finite (tokenkit's epsilon)


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


def alm_loss(student_rows, teacher_rows, aligned: AlignedBatch, temperature: float = 1.0) -> Tensor:
    """Mean over the spans (by ``aligned.weight``) of the binary KL between the teacher's and the
    student's likelihood of each span's text, × T² like every divergence here. ``student_rows(rows)``
    and ``teacher_rows(rows)``: the two models' logits of those flattened rows (the teacher's without
    gradient; a cached teacher's made dense, ``distill.losses.cross_vocab.logit_rows``)."""
    with torch.no_grad():
        lt = span_logprobs(teacher_rows, aligned.teacher, temperature)
    ls = span_logprobs(student_rows, aligned.student, temperature)
    w = aligned.weight.to(ls.device, torch.float32)
    return (binary_kl(lt, ls) * w).sum() / w.sum().clamp_min(1.0) * temperature**2
