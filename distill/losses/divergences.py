"""Distillation divergences on logits, dense or sparse teacher, fused and chunked over tokens.

Terms (the names used in configs and in ``weights``):

- ``forward_kl``  KL(p_T || q_T), mass-covering (Hinton et al. 2015);
- ``reverse_kl``  KL(q_T || p_T), mode-seeking;
- ``jsd``         generalized Jensen-Shannon divergence exactly as TRL's GKDTrainer
                  ``generalized_jsd_loss``: β=0 is forward KL, β=1 is reverse KL, otherwise
                  β·KL(p||m) + (1−β)·KL(q||m) with the mixture m = β·p + (1−β)·q;
- ``tvd``         total variation ½·Σ|p_T − q_T|;
- ``ce``          next-token cross-entropy on the labels (no temperature).

p is the teacher, q the student, ``_T`` the softmax at temperature T. Every divergence is
multiplied by T², Hinton's convention that keeps gradient magnitudes independent of T, so
weights of different terms stay comparable whatever the temperature. Divergences are
averaged over the distilled tokens (``mask``), CE over the labels that are not -100.

A sparse teacher (``SparseTeacher``: the cache's top-k log-probs) is compared with the
student on a smaller outcome space, chosen by ``tail`` (see ``distill.teacher.outputs``):

- ``"bucket"``: k+1 outcomes, the k cached tokens plus one "everything else" outcome.
  Teacher tail mass = 1 − Σp_k, clamped to at least ``TAIL_EPS`` (below it, it is float32
  rounding noise), then the k+1 teacher probabilities are renormalized. Student tail mass =
  the student's probability of all other tokens, computed stably as a logsumexp over them.
  With k = V there is no tail outcome and the result equals the dense teacher exactly.
- ``"renormalize"``: the teacher's k probabilities are rescaled to sum to 1 (p̂). Forward KL
  uses the student's full-vocabulary log-softmax gathered at the k tokens, as DistillKit
  does: Σ p̂·(log p̂ − log q_T[k]). It is not 0 when the student equals the teacher (it is
  then −T²·log Σ_k p_T, the tempered teacher's top-k mass) and it pushes the student's mass
  into the top-k. Reverse KL,
  JSD and TVD renormalize the student over the same k tokens too, so they are 0 for
  identical models and give no gradient to the student's other tokens.

Temperature with a sparse teacher: the cache holds log-probs at its own temperature
(normally 1) and T is applied on top of them. The teacher's distribution outside the
top-k is unknown, so T is applied after coarse-graining, to both models alike: the
(k+1)- or k-outcome distribution r is re-tempered as softmax(log r / T). For "renormalize"
this is exact (the tempered teacher restricted to its top-k); for "bucket" the tail is
tempered as one outcome, which is exact at T = 1, keeps a divergence of 0 for identical
models at any T, and equals the dense loss when k = V. (Forward KL in "renormalize" mode
keeps DistillKit's full-vocabulary student at T.)

``chunked_logit_loss`` computes the weighted sum fused and chunked over tokens: float32
one chunk at a time, keeping only the gradient with respect to
the student logits. ``logit_chunk`` is the per-chunk kernel, also used by the fused
linear loss. Every gradient is hand-derived, on the outcome space the two distributions
are compared on (vocabulary, k or k+1), w.r.t. the student's tempered logits w there:

    forward KL   q − p
    reverse KL   q ⊙ (log q − log p − RKL)
    TVD          ½ · q ⊙ (s − Σ s·q),  s = sign(q − p)
    JSD          (1−β) · q ⊙ (log q − log m − KL(q||m))       (dJSD/dq = (1−β)·log(q/m))

and mapped back to the student logits: ×T for dense and renormalized outcomes (then
scattered to the k tokens); for the tail bucket its component is spread over the tail
tokens in proportion to the student's own probabilities there. Renormalize-mode forward
KL is T·(q_T − p̂) on the k tokens and T·q_T elsewhere. Written by hand because no library
offers chunked KD divergences that run on CPU (Liger-Kernel's are CUDA/Triton-only).
Teacher log-probs must be finite (dense logits may not be −inf).

The plain functions (``forward_kl``, ``reverse_kl``, ``jsd``, ``tvd``, ``cross_entropy``)
are the readable, autograd-differentiable specification the fused loss is tested against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError
from distill.losses.terms import DISTRIBUTION_TERMS, DIVERGENCES
from distill.teacher.outputs import SparseTeacher

IGNORE_INDEX = -100  # label of tokens no loss looks at (padding, prompts), as in torch and HF

TERMS = DISTRIBUTION_TERMS  # the terms this engine computes (the registry's: distill.losses.terms)
TAIL_EPS = 1e-6  # smallest teacher tail mass in "bucket" mode (about float32 rounding of 1 − Σp)

Teacher = Tensor | SparseTeacher | None


# ---------------------------------------------------------------- plain references


def forward_kl(
    s: Tensor, t: Tensor | SparseTeacher, temperature: float = 1.0, mask: Tensor | None = None, *, tail: str = "bucket"
) -> Tensor:
    """Mean over masked tokens of KL(p_T || q_T) · T²."""
    return _reference("forward_kl", s, t, temperature, mask, tail)


def reverse_kl(
    s: Tensor, t: Tensor | SparseTeacher, temperature: float = 1.0, mask: Tensor | None = None, *, tail: str = "bucket"
) -> Tensor:
    """Mean over masked tokens of KL(q_T || p_T) · T²."""
    return _reference("reverse_kl", s, t, temperature, mask, tail)


def tvd(
    s: Tensor, t: Tensor | SparseTeacher, temperature: float = 1.0, mask: Tensor | None = None, *, tail: str = "bucket"
) -> Tensor:
    """Mean over masked tokens of ½·Σ|p_T − q_T| · T²."""
    return _reference("tvd", s, t, temperature, mask, tail)


def jsd(
    s: Tensor,
    t: Tensor | SparseTeacher,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    *,
    tail: str = "bucket",
) -> Tensor:
    """Mean over masked tokens of TRL's generalized JSD · T²."""
    return _reference("jsd", s, t, temperature, mask, tail, beta)


def cross_entropy(s: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token CE over labels != -100 (0 when there are none)."""
    per_token = F.cross_entropy(s.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return per_token / max(1, int((labels != IGNORE_INDEX).sum()))


def _reference(term, s, t, T, mask, tail, beta=0.5):
    log_p, log_q = _reference_logprobs(term, s.float(), t, T, tail)
    per_token = _REFERENCE_PER_TOKEN[term](log_p, log_q, beta)
    if mask is None:
        mask = torch.ones(per_token.shape, dtype=torch.bool, device=per_token.device)
    return per_token[mask].sum() / max(1, int(mask.sum())) * T**2


def _reference_logprobs(term, s, t, T, tail):
    """Teacher and student log-probs on the outcomes they are compared on (see module doc)."""
    if not isinstance(t, SparseTeacher):
        return F.log_softmax(t.float() / T, -1), F.log_softmax(s / T, -1)
    lp, idx = t.logprobs.float(), t.indices
    if tail == "renormalize" and term == "forward_kl":
        return F.log_softmax(lp / T, -1), F.log_softmax(s / T, -1).gather(-1, idx)
    if tail == "renormalize" or idx.shape[-1] >= s.shape[-1]:
        return F.log_softmax(lp / T, -1), F.log_softmax(s.gather(-1, idx) / T, -1)
    log_qk = F.log_softmax(s, -1).gather(-1, idx)
    q_tail = 1 - log_qk.exp().sum(-1, keepdim=True)
    p_tail = (1 - lp.exp().sum(-1, keepdim=True)).clamp(min=TAIL_EPS)
    log_p = F.log_softmax(torch.cat([lp, p_tail.log()], -1) / T, -1)
    log_q = F.log_softmax(torch.cat([log_qk, q_tail.log()], -1) / T, -1)
    return log_p, log_q


def _kl(log_a, log_b):
    """Per-token KL(a || b) from log-probs."""
    return F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)


def _jsd_reference(log_p, log_q, beta):
    if beta == 0:
        return _kl(log_p, log_q)
    if beta == 1:
        return _kl(log_q, log_p)
    log_m = torch.logsumexp(torch.stack([log_q + math.log(1 - beta), log_p + math.log(beta)]), 0)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


_REFERENCE_PER_TOKEN = {
    "forward_kl": lambda log_p, log_q, beta: _kl(log_p, log_q),
    "reverse_kl": lambda log_p, log_q, beta: _kl(log_q, log_p),
    "tvd": lambda log_p, log_q, beta: 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1),
    "jsd": _jsd_reference,
}


# ---------------------------------------------------------------- per-chunk kernel


def logit_chunk(
    s: Tensor,
    t: Teacher,
    y: Tensor,
    m: Tensor,
    coef: dict[str, float],
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    tail: str = "bucket",
    want_grad: bool = True,
    out: Tensor | None = None,
    kernel=None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Loss sums and their gradient for one chunk of tokens, in float32.

    s: [n, V] student logits (any float dtype); t: None, dense teacher logits [n, V] (already
    trimmed to V), or SparseTeacher with [n, k]; y: [n] long labels (-100 = ignore, for CE);
    m: [n] bool, tokens to distill (divergence terms). coef: {term: coefficient} with terms
    from TERMS (only "ce" when t is None); terms absent are not computed. Trusts its caller:
    nothing is checked here, once per chunk. Returns sums[term] = float32 0-dim sum over
    the chunk's valid tokens of the per-token term value (divergences already × T²), and
    grad = d(Σ_term coef[term] · sums[term]) / ds as float32 [n, V] (None if not want_grad), or
    written into ``out`` [n, V] (any float dtype) and returned as ``out`` when it is given.
    ``kernel``: a faster implementation of some chunks (``distill.losses.compiled.chunk_kernel``),
    called with the same arguments; where it returns None, the eager code below runs.
    """
    if kernel is not None:
        fast = kernel(s, t, y, m, coef, temperature, tail, want_grad, out)
        if fast is not None:
            return fast
    sums, grad = _eager_chunk(s, t, y, m, coef, temperature, beta, tail, want_grad)
    if out is None or grad is None:
        return sums, grad
    return sums, out.copy_(grad)


def _eager_chunk(s, t, y, m, coef, temperature, beta, tail, want_grad):
    divs = {term: c for term, c in coef.items() if term != "ce"}
    x = s.float()  # never modified in place: it is ``s`` itself when s is float32
    if not isinstance(t, SparseTeacher) and set(divs) <= {"forward_kl"}:
        return _forward_kl_ce(x, t, y, m, coef, temperature, want_grad)
    if (
        isinstance(t, SparseTeacher)
        and set(divs) == {"forward_kl"}
        and tail == "bucket"
        and temperature == 1
        and t.indices.shape[-1] < x.shape[-1]
    ):
        return _bucket_forward_kl_ce(x, t, y, m, coef, want_grad)
    sums, grad = {}, None
    if isinstance(t, SparseTeacher) and divs:
        sums, grad = _sparse_divergences(x, t, m, divs, temperature, beta, tail, want_grad)
    elif divs:
        sums, grad = _dense_divergences(x, t, m, divs, temperature, beta, want_grad)
    if "ce" in coef:
        sums["ce"], g = _cross_entropy(x, y, coef["ce"], want_grad)
        grad = g if grad is None else grad.add_(g)
    if want_grad and grad is None:
        grad = torch.zeros_like(x)
    return sums, grad


def _forward_kl_ce(x, t, y, m, coef, T, want_grad):
    """Forward KL + CE in one fused pass: the default objective and the hot path.

    The gradient is c_ce·(q − onehot) + c_kl·T·(q_T − p), built in place in q.
    """
    valid = y != IGNORE_INDEX
    target = torch.where(valid, y, 0).unsqueeze(-1)
    log_q = F.log_softmax(x, dim=-1)
    sums = {}
    if "ce" in coef:
        sums["ce"] = -torch.where(valid, log_q.gather(-1, target).squeeze(-1), 0.0).sum()
    w_ce = (coef.get("ce", 0.0) * valid).unsqueeze(-1)  # per-row CE coefficient
    q = log_q.exp() if want_grad else None
    g = None
    if t is not None and "forward_kl" in coef:
        log_p = F.log_softmax(t.float() / T if T != 1 else t.float(), dim=-1)
        p = log_p.exp()
        log_qT = log_q if T == 1 else F.log_softmax(x / T, dim=-1)
        kl = log_p.sub_(log_qT).mul_(p).sum(-1)
        sums["forward_kl"] = torch.where(m, kl, 0.0).sum() * T**2
        if want_grad:
            w_kl = (coef["forward_kl"] * T * m).unsqueeze(-1)
            if T == 1:  # q_T == q: one pass
                g = q.mul_(w_ce + w_kl).addcmul_(p, w_kl, value=-1.0)
            else:
                g = q.mul_(w_ce).addcmul_(log_qT.exp_().sub_(p), w_kl)
    elif want_grad:
        g = q.mul_(w_ce)
    if g is not None and "ce" in coef:
        g.scatter_add_(-1, target, -w_ce)
    return sums, g


def _bucket_forward_kl_ce(x, teacher, y, m, coef, want_grad):
    """Bucket-mode forward KL at T = 1 (+ CE) with one vocabulary-sized buffer: the offline
    cache's hot path, which must cost about what CE alone costs. Same values as
    ``_bucket_divergences``; the gradient on the student logits is q − p on the k tokens and
    q·(1 − p_tail/q_tail) on all others (p: the teacher's k+1 probabilities)."""
    lp, idx = _sanitize(teacher, m)
    c_kl, c_ce = coef["forward_kl"], coef.get("ce")
    log_q = F.log_softmax(x, dim=-1)
    log_qk = log_q.gather(-1, idx)
    sums = {}
    valid = y != IGNORE_INDEX
    target = torch.where(valid, y, 0).unsqueeze(-1)
    if c_ce is not None:
        sums["ce"] = -(log_q.gather(-1, target).squeeze(-1) * valid).sum()
    q = log_q.exp_()
    q_k = log_qk.exp()
    # Student mass outside the top-k as a sum of the small probabilities themselves (no 1 − Σ
    # cancellation): zero the k entries, sum, put them back.
    q_tail = q.scatter_(-1, idx, 0.0).sum(-1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)
    q.scatter_(-1, idx, q_k)
    p_tail = (-torch.expm1(torch.logsumexp(lp, dim=-1, keepdim=True))).clamp(min=TAIL_EPS)
    log_p = F.log_softmax(torch.cat([lp, p_tail.log()], -1), dim=-1)
    p = log_p.exp()
    kl = (p * (log_p - torch.cat([log_qk, q_tail.log()], -1))).sum(-1)
    sums["forward_kl"] = torch.where(m, kl, 0.0).sum()
    if not want_grad:
        return sums, None
    kl_w = (c_kl * m).unsqueeze(-1)
    ratio = p[:, -1:] / q_tail
    row = kl_w * (1 - ratio) + ((c_ce or 0.0) * valid).unsqueeze(-1)
    grad = q.mul_(row).scatter_add_(-1, idx, kl_w * (q_k * ratio - p[:, :-1]))
    if c_ce is not None:
        grad.scatter_add_(-1, target, (-c_ce * valid).unsqueeze(-1).to(grad.dtype))
    return sums, grad


def _cross_entropy(x, y, c, want_grad):
    """CE sum over valid labels and c·(q − onehot) on those rows."""
    valid = y != IGNORE_INDEX
    target = torch.where(valid, y, 0).unsqueeze(-1)
    log_q = F.log_softmax(x, dim=-1)
    total = -torch.where(valid, log_q.gather(-1, target).squeeze(-1), 0.0).sum()
    if not want_grad:
        return total, None
    w = (c * valid).unsqueeze(-1)
    return total, log_q.exp_().mul_(w).scatter_add_(-1, target, -w)


def _dense_divergences(x, t, m, coef, T, beta, want_grad):
    log_q = F.log_softmax(x / T if T != 1 else x, dim=-1)
    log_p = F.log_softmax(t.float() / T if T != 1 else t.float(), dim=-1)
    return _outcome_divergences(log_p, log_q, m, coef, T, beta, want_grad)


def _sparse_divergences(x, teacher, m, coef, T, beta, tail, want_grad):
    lp, idx = _sanitize(teacher, m)
    if tail == "bucket" and idx.shape[-1] < x.shape[-1]:
        return _bucket_divergences(x, lp, idx, m, coef, T, beta, want_grad)
    log_p = F.log_softmax(lp / T, dim=-1)
    sums, grad = {}, None
    renorm = {term: c for term, c in coef.items() if not (term == "forward_kl" and tail == "renormalize")}
    if renorm:  # student renormalized over the k tokens
        log_q = F.log_softmax(x.gather(-1, idx) / T, dim=-1)
        sums, g = _outcome_divergences(log_p, log_q, m, renorm, T, beta, want_grad)
        grad = torch.zeros_like(x).scatter_add_(-1, idx, g) if want_grad else None
    if len(renorm) < len(coef):
        sums["forward_kl"], g = _renormalized_forward_kl(x, log_p, idx, m, coef["forward_kl"], T, want_grad)
        grad = g if grad is None else grad.add_(g)
    return sums, grad


def _sanitize(teacher, m):
    """Top-k log-probs as float32 and indices, with harmless values in rows that are not distilled."""
    lp, idx = teacher.logprobs.float(), teacher.indices.long()
    if not bool(m.all()):
        keep = m.unsqueeze(-1)
        lp, idx = torch.where(keep, lp, 0.0), torch.where(keep, idx, 0)
    return lp, idx


def _bucket_divergences(x, lp, idx, m, coef, T, beta, want_grad):
    """Both models on k+1 outcomes: the k teacher tokens and one tail bucket."""
    tail_z = x.scatter(-1, idx, float("-inf"))  # student logits outside the top-k
    lse_tail = torch.logsumexp(tail_z, dim=-1, keepdim=True)
    log_q = F.log_softmax(torch.cat([x.gather(-1, idx), lse_tail], -1) / T, dim=-1)
    p_tail = (-torch.expm1(torch.logsumexp(lp, dim=-1, keepdim=True))).clamp(min=TAIL_EPS)
    log_p = F.log_softmax(torch.cat([lp, p_tail.log()], -1) / T, dim=-1)
    sums, g = _outcome_divergences(log_p, log_q, m, coef, T, beta, want_grad)
    if not want_grad:
        return sums, None
    # the bucket's gradient goes to the tail tokens in proportion to the student's probabilities there
    grad = tail_z.sub_(lse_tail).exp_().mul_(g[:, -1:]).scatter_add_(-1, idx, g[:, :-1])
    return sums, grad


def _renormalized_forward_kl(x, log_p, idx, m, c, T, want_grad):
    """DistillKit's forward KL Σ p̂·(log p̂ − log q_T[k]); gradient T·(q_T − p̂ scattered)."""
    log_qT = F.log_softmax(x / T if T != 1 else x, dim=-1)
    p = log_p.exp()
    kl = (p * (log_p - log_qT.gather(-1, idx))).sum(-1)
    total = torch.where(m, kl, 0.0).sum() * T**2
    if not want_grad:
        return total, None
    w = (c * T * m).unsqueeze(-1)
    return total, log_qT.exp_().mul_(w).scatter_add_(-1, idx, p.mul_(-w))


def _outcome_divergences(log_p, log_q, m, coef, T, beta, want_grad):
    """Masked sums (× T²) of each divergence in coef on one outcome space, and
    Σ coef·T·d(divergence)/dw, w being the student's tempered logits there ([n, K])."""
    p, q = log_p.exp(), log_q.exp()
    sums, grad = {}, None
    for term, c in coef.items():
        value, g = _PER_TOKEN[term](log_p, log_q, p, q, beta, want_grad)
        sums[term] = torch.where(m, value, 0.0).sum() * T**2
        if want_grad:
            g.mul_((c * T * m).unsqueeze(-1))
            grad = g if grad is None else grad.add_(g)
    return sums, grad


# Each returns the per-token value and a fresh tensor with its gradient w.r.t. w (log_q = log_softmax(w)).


def _forward_kl_terms(log_p, log_q, p, q, beta, want_grad):
    value = (p * (log_p - log_q)).sum(-1)
    return value, (q - p) if want_grad else None


def _reverse_kl_terms(log_p, log_q, p, q, beta, want_grad):
    d = log_q - log_p
    value = (q * d).sum(-1)
    return value, d.sub_(value.unsqueeze(-1)).mul_(q) if want_grad else None


def _tvd_terms(log_p, log_q, p, q, beta, want_grad):
    sign = q - p
    value = 0.5 * sign.abs().sum(-1)
    if not want_grad:
        return value, None
    sign.sign_()
    return value, sign.sub_((sign * q).sum(-1, keepdim=True)).mul_(q).mul_(0.5)


def _jsd_terms(log_p, log_q, p, q, beta, want_grad):
    if beta == 0:
        return _forward_kl_terms(log_p, log_q, p, q, beta, want_grad)
    if beta == 1:
        return _reverse_kl_terms(log_p, log_q, p, q, beta, want_grad)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    kl_p = (p * (log_p - log_m)).sum(-1)
    h = log_m.neg_().add_(log_q)  # log q − log m
    kl_q = (q * h).sum(-1)
    value = beta * kl_p + (1 - beta) * kl_q
    return value, h.sub_(kl_q.unsqueeze(-1)).mul_(q).mul_(1 - beta) if want_grad else None


_PER_TOKEN = {"forward_kl": _forward_kl_terms, "reverse_kl": _reverse_kl_terms, "jsd": _jsd_terms, "tvd": _tvd_terms}


# ---------------------------------------------------------------- chunked loss


def chunked_logit_loss(
    student_logits: Tensor,
    teacher: Teacher,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    weights: dict[str, float],
    temperature: float = 1.0,
    beta: float = 0.5,
    tail: str = "bucket",
    chunk_size: int = 256,
    kernel=None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ_term weights[term] · mean(term), fused and chunked; returns (loss, {term: detached mean}).

    student_logits [..., V]; teacher None, dense logits [..., V] or SparseTeacher [..., k];
    labels [...]; mask [...] bool, the tokens to distill (default labels != -100). CE is
    averaged over valid labels, each divergence over masked tokens (0 tokens → 0). Terms
    with weight 0 are still computed and reported (for logging), except divergences when
    there is no teacher. The settings are trusted: ``Objective`` validates them once
    (``distill.losses.spec``); a direct caller passes terms of ``TERMS``, weights >= 0,
    temperature > 0, beta in [0, 1], a tail of ``teacher.outputs.TAIL_MODES``, chunk_size >= 1.
    ``kernel``: see ``logit_chunk`` (the compiled chunks, ``loss.compile``).
    """
    if teacher is None:  # nothing to compare with: the divergences drop out
        weights = {term: w for term, w in weights.items() if term not in DIVERGENCES}
    _check_shapes(student_logits, teacher, labels, mask)
    if mask is None:
        mask = labels != IGNORE_INDEX
    loss, parts = _ChunkedLogitLoss.apply(
        student_logits, teacher, labels, mask, weights, float(temperature), float(beta), tail, int(chunk_size), kernel
    )
    return loss, dict(zip(weights, parts.unbind()))


class _ChunkedLogitLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, teacher, labels, mask, weights, T, beta, tail, chunk, kernel):
        V = s.shape[-1]
        s2, y, m = s.reshape(-1, V), labels.reshape(-1), mask.reshape(-1)
        t2 = teacher.flatten_tokens() if isinstance(teacher, SparseTeacher) else teacher
        if isinstance(t2, Tensor):
            t2 = t2.reshape(-1, V)
        counts = {term: max(1, int((y != IGNORE_INDEX).sum() if term == "ce" else m.sum())) for term in weights}
        coef = {term: w / counts[term] for term, w in weights.items()}
        grad = torch.empty_like(s2) if s.requires_grad else None
        totals = {term: torch.zeros((), device=s.device) for term in weights}
        for i in range(0, s2.shape[0], chunk):
            rows = slice(i, i + chunk)
            sums, g = logit_chunk(
                s2[rows],
                None if t2 is None else t2[rows],
                y[rows],
                m[rows],
                coef,
                temperature=T,
                beta=beta,
                tail=tail,
                want_grad=grad is not None,
                out=None if grad is None else grad[rows],  # the gradient goes straight into the buffer
                kernel=kernel,
            )
            for term in weights:
                totals[term] = totals[term] + sums[term]
        parts = torch.stack([totals[term] / counts[term] for term in weights])
        loss = sum(w * parts[i] for i, w in enumerate(weights.values()))
        ctx.save_for_backward(grad if grad is not None else s2.new_empty(0))
        ctx.shape = s.shape
        ctx.mark_non_differentiable(parts)
        return loss, parts

    @staticmethod
    def backward(ctx, grad_loss, _grad_parts):
        (grad,) = ctx.saved_tensors
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):  # skip a logits-sized pass in the usual case
            grad = grad * grad_loss.to(grad.dtype)
        return grad.view(ctx.shape), *([None] * 9)


def _check_shapes(s, teacher, labels, mask):
    """Tokens are flattened and cut into chunks by row: a tensor with other token dimensions would
    be read misaligned, silently, and dense teacher logits over more rows would be reshaped into
    the wrong tokens. (Settings are validated once, by ``distill.losses.spec``, not here.)"""
    tokens = s.shape[:-1]
    if labels.shape != tokens or (mask is not None and mask.shape != tokens):
        raise DistillError(f"labels/mask shape {tuple(labels.shape)} does not match student logits {tuple(s.shape)}")
    if isinstance(teacher, SparseTeacher) and (teacher.shape[:-1] != tokens or teacher.indices.shape != teacher.shape):
        raise DistillError(f"sparse teacher {tuple(teacher.shape)} does not match student logits {tuple(s.shape)}")
    if isinstance(teacher, Tensor) and teacher.shape != s.shape:
        raise DistillError(
            f"teacher logits {tuple(teacher.shape)} do not match student logits {tuple(s.shape)} "
            "(trim the teacher to the student's vocabulary first)"
        )
