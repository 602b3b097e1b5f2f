"""LM head fused with the distillation loss, chunked over tokens so that no
``[tokens × vocab]`` logits tensor ever exists.

At a Llama-3 vocabulary (128,256) the logits of a 4,096-token batch take 2 GiB in
float32, and a plain "project, log-softmax, KL, CE, backward" keeps several such
tensors alive at once. Here the student's and the teacher's hidden states are projected
one chunk of tokens at a time; each chunk's loss sums and its gradient with respect to
the student logits come from ``divergences.logit_chunk`` (float32 softmax math),
and that gradient is pushed through the LM head immediately::

    grad_hidden[chunk] = g @ W        grad_W += gᵀ @ hidden[chunk]        grad_b += Σ g

all during the forward pass, so the backward pass only scales the stored gradients by
``grad_output``. Peak memory is then the gradients of the inputs plus a few
``[chunk × vocab]`` buffers: at 4,096 tokens × 1,024 × 128,256 in fp32, 1.3 GiB instead
of the naive 14 GiB, and faster (``benchmarks/fused_linear_memory.py``). This is the trick
of Liger-Kernel's fused linear cross-entropy / JSD / KL losses, which are Triton kernels
(CUDA/ROCm/XPU only); nothing available runs it on CPU, hence this plain-PyTorch version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from distill.errors import DistillError
from distill.losses.divergences import DIVERGENCES, IGNORE_INDEX, TERMS, logit_chunk


def fused_linear_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    weights: dict[str, float],
    temperature: float = 1.0,
    beta: float = 0.5,
    vocab_size: int | None = None,
    chunk_size: int = 256,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ weights[term] · mean(term)`` over the LM heads' logits, never materializing them.

    student_hidden ``[..., H_s]``: the final hidden state (after the final norm);
    student_weight ``[V_s, H_s]``: the LM head. Only its first ``vocab_size`` rows
    (default: all) are vocabulary; the rest is padding and gets zero gradient.
    teacher_hidden / teacher_weight ``[..., H_t]`` / ``[V_t, H_t]``: the frozen teacher
    (no gradients), or both ``None`` for CE only (divergences must then have weight 0).
    ``V_t ≠ V_s`` needs an explicit ``vocab_size``. Terms are those of
    ``distill.losses.divergences`` (forward_kl, reverse_kl, jsd, tvd, ce), with the same
    definitions: divergences (× T²) averaged over ``mask`` ``[...]`` (bool; default:
    labelled tokens), CE over ``labels`` ≠ -100. Returns ``(loss, parts)``: a float32
    scalar and the detached mean of every term in ``weights``.

    Matmuls run in the inputs' dtype (the autocast dtype under autocast), softmax math in
    float32. Peak memory beyond the gradients themselves: a few ``[chunk_size × V]`` float32
    buffers (256 × 128,256 → ~125 MiB each).
    """
    spec = _validate(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, mask, weights,
                     temperature, beta, vocab_size, chunk_size, student_bias, teacher_bias)
    labels = labels.reshape(-1)
    mask = (labels != IGNORE_INDEX) if mask is None else mask.reshape(-1)
    n_labelled, n_distilled = max(1, int((labels != IGNORE_INDEX).sum())), max(1, int(mask.sum()))
    spec.counts = {term: n_labelled if term == "ce" else n_distilled for term in spec.weights}
    spec.coef = {term: w / spec.counts[term] for term, w in spec.weights.items()}
    spec.want_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (student_hidden, student_weight, student_bias)
    )
    spec.dtypes = (_matmul_dtype(student_hidden, student_weight),
                   None if teacher_hidden is None else _matmul_dtype(teacher_hidden, teacher_weight))
    loss, means = _FusedLinearLoss.apply(
        student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, labels, mask, spec
    )
    return loss, dict(zip(spec.weights, means.unbind()))


def _matmul_dtype(h: Tensor, w: Tensor) -> torch.dtype:
    """What ``h @ wᵀ`` would run in here: the autocast dtype under autocast (Lightning's
    ``bf16-mixed``), else the common dtype of hidden state and weight."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, w.dtype)


@dataclass
class _Spec:
    """Everything about one call that is not a tensor."""

    weights: dict[str, float]  # the terms that are computed (divergences dropped without a teacher)
    vocab: int
    temperature: float
    beta: float
    chunk: int
    counts: dict[str, int] = field(default_factory=dict)  # tokens each term is averaged over
    coef: dict[str, float] = field(default_factory=dict)  # weight / count: the chunk function's coefficients
    want_grad: bool = True
    dtypes: tuple = (torch.float32, torch.float32)  # matmul dtype of the student's and the teacher's head


class _FusedLinearLoss(torch.autograd.Function):
    """Loss and all student gradients in ``forward``; ``backward`` only scales them."""

    @staticmethod
    def forward(ctx, h, w, b, th, tw, tb, labels, mask, spec: _Spec):
        with torch.autocast(h.device.type, enabled=False):  # dtypes are explicit (spec.dtypes)
            loss, means, grads = _run_chunks(h, w, b, th, tw, tb, labels, mask, spec, ctx.needs_input_grad[:3])
        ctx.grads = grads
        ctx.mark_non_differentiable(means)
        return loss, means

    @staticmethod
    @once_differentiable  # the stored gradients are constants: no double backward
    def backward(ctx, grad_loss, _grad_means):
        grads, ctx.grads = ctx.grads, None  # drop ctx's reference so autograd can take the buffers over
        if grads is None:
            return (None,) * 9
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):  # skip a weight-sized copy in the usual case
            grads = [None if g is None else g * grad_loss.to(g.dtype) for g in grads]
        return (*grads, None, None, None, None, None, None)


def _run_chunks(h, w, b, th, tw, tb, labels, mask, spec: _Spec, needs):
    """The token loop: per chunk, both heads' logits, the chunk function, the gradient matmuls."""
    h2, th2 = h.reshape(-1, h.shape[-1]), None if th is None else th.reshape(-1, th.shape[-1])
    student = _Head.cut(w, b, spec.vocab, spec.dtypes[0])
    teacher = None if th is None else _Head.cut(tw, tb, spec.vocab, spec.dtypes[1])
    grads = _Grads(h2, w, b, spec.vocab, needs) if spec.want_grad else None
    sums = dict.fromkeys(spec.weights, 0.0)
    for lo in range(0, h2.shape[0], spec.chunk):
        rows = slice(lo, lo + spec.chunk)
        h_rows = h2[rows].to(student.weight.dtype)
        s = student.logits(h_rows)
        t = None if teacher is None else teacher.logits(th2[rows])
        part, g = logit_chunk(s, t, labels[rows], mask[rows], spec.coef, temperature=spec.temperature,
                              beta=spec.beta, want_grad=grads is not None)
        del s, t  # free the chunk's logits before the gradient matmuls allocate
        sums = {term: sums[term] + part[term] for term in sums}
        if grads is not None:
            grads.add(rows, g, h_rows, student.weight)
        del g
    loss = torch.as_tensor(sum(spec.coef[term] * sums[term] for term in sums), dtype=torch.float32)
    means = torch.stack([torch.as_tensor(sums[term] / spec.counts[term], dtype=torch.float32) for term in sums])
    return loss, means, None if grads is None else grads.finish(h.shape)


@dataclass
class _Head:
    """An LM head cut to the real vocabulary, in its matmul dtype: ``logits(x) = x @ weightᵀ + bias``."""

    weight: Tensor  # [V, H]
    bias: Tensor | None  # [V]

    @classmethod
    def cut(cls, w: Tensor, b: Tensor | None, vocab: int, dtype: torch.dtype) -> "_Head":
        return cls(w[:vocab].to(dtype), None if b is None else b[:vocab].to(dtype))

    def logits(self, x: Tensor) -> Tensor:
        x = x.to(self.weight.dtype)
        if self.bias is None:
            return x @ self.weight.t()
        return torch.addmm(self.bias, x, self.weight.t())


class _Grads:
    """Gradient buffers for the student's hidden state, LM-head weight and bias, filled chunk by chunk.

    Weight and bias gradients are summed over chunks in float32 and cast to the
    parameters' dtype once at the end: adding many chunk contributions into a bf16
    buffer would round away much of each update. Each chunk's ``gᵀ @ h`` itself runs in
    the matmul dtype (bf16 matmuls are ~4× faster than fp32 on CPUs with AVX512-BF16);
    its rounding happens once per chunk, it does not compound.
    """

    def __init__(self, h2: Tensor, w: Tensor, b: Tensor | None, vocab: int, needs: tuple[bool, bool, bool]):
        self.h = torch.empty_like(h2) if needs[0] else None
        self.w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if needs[1] else None
        self.b = torch.zeros(b.shape, dtype=torch.float32, device=b.device) if b is not None and needs[2] else None
        self.out_dtypes = (w.dtype, None if b is None else b.dtype)
        self.vocab = vocab

    def add(self, rows: slice, g: Tensor, h_rows: Tensor, weight: Tensor) -> None:
        """Push one chunk's float32 ``d loss / d logits`` [n, V] through the LM head
        (``h_rows`` and ``weight`` in the matmul dtype)."""
        g_mm = g.to(weight.dtype)
        if self.h is not None:
            if self.h.dtype == weight.dtype:
                torch.mm(g_mm, weight, out=self.h[rows])
            else:
                self.h[rows] = g_mm @ weight
        if self.w is not None:
            if weight.dtype == torch.float32:
                self.w[: self.vocab].addmm_(g.t(), h_rows)
            else:
                self.w[: self.vocab].add_(g_mm.t() @ h_rows)
        if self.b is not None:
            self.b[: self.vocab].add_(g.sum(0))

    def finish(self, hidden_shape) -> list[Tensor | None]:
        gw = None if self.w is None else self.w.to(self.out_dtypes[0])
        gb = None if self.b is None else self.b.to(self.out_dtypes[1])
        gh = None if self.h is None else self.h.view(hidden_shape)
        return [gh, gw, gb]


def _validate(h, w, th, tw, labels, mask, weights, temperature, beta, vocab_size, chunk_size, b, tb) -> _Spec:
    """Check shapes and options; the ``_Spec`` of the call."""
    _check_head("student", h, w, b)
    if (th is None) != (tw is None):
        raise DistillError("teacher_hidden and teacher_weight must both be given or both be None")
    if th is not None:
        _check_head("teacher", th, tw, tb)
        if th.shape[:-1] != h.shape[:-1]:
            raise DistillError(f"teacher_hidden tokens {tuple(th.shape[:-1])} != student's {tuple(h.shape[:-1])}")
    elif tb is not None:
        raise DistillError("teacher_bias given without a teacher")
    if labels.shape != h.shape[:-1]:
        raise DistillError(f"labels shape {tuple(labels.shape)} != hidden tokens {tuple(h.shape[:-1])}")
    if mask is not None and (mask.shape != labels.shape or mask.dtype != torch.bool):
        raise DistillError(f"mask must be bool with shape {tuple(labels.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    vocab = _check_vocab(vocab_size, w, tw)
    bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))]
    if bad.numel():
        raise DistillError(f"label {int(bad[0])} outside the vocabulary [0, {vocab}) (and not {IGNORE_INDEX})")
    if not temperature > 0 or not 0 <= beta <= 1 or chunk_size < 1:
        raise DistillError(f"need temperature > 0, 0 <= beta <= 1, chunk_size >= 1; got {temperature}, {beta}, "
                           f"{chunk_size}")
    return _Spec(_check_weights(weights, has_teacher=th is not None), vocab, float(temperature), float(beta),
                 int(chunk_size))


def _check_head(who: str, h: Tensor, w: Tensor, b: Tensor | None) -> None:
    if w.dim() != 2 or h.dim() < 1 or h.shape[-1] != w.shape[1]:
        raise DistillError(f"{who}: hidden {tuple(h.shape)} does not fit LM-head weight {tuple(w.shape)} "
                           "(want [..., H] and [V, H])")
    if not (h.is_floating_point() and w.is_floating_point()):
        raise DistillError(f"{who}: hidden and LM-head weight must be floating point, got {h.dtype}, {w.dtype}")
    if b is not None and b.shape != w.shape[:1]:
        raise DistillError(f"{who}: bias shape {tuple(b.shape)} != ({w.shape[0]},)")


def _check_vocab(vocab_size: int | None, w: Tensor, tw: Tensor | None) -> int:
    rows = w.shape[0] if tw is None else min(w.shape[0], tw.shape[0])
    if vocab_size is None:
        if tw is not None and tw.shape[0] != w.shape[0]:
            raise DistillError(f"student and teacher LM heads have {w.shape[0]} and {tw.shape[0]} rows: "
                               "pass vocab_size (the real vocabulary; extra rows are padding)")
        return rows
    if not 1 <= vocab_size <= rows:
        raise DistillError(f"vocab_size {vocab_size} must be in [1, {rows}] (the LM heads' rows)")
    return int(vocab_size)


def _check_weights(weights: dict[str, float], has_teacher: bool) -> dict[str, float]:
    unknown = set(weights) - set(TERMS)
    if unknown:
        raise DistillError(f"unknown loss terms {sorted(unknown)}; known: {', '.join(TERMS)}")
    if any(not (math.isfinite(w) and w >= 0) for w in weights.values()):
        raise DistillError(f"loss weights must be finite and >= 0, got {weights}")
    if not has_teacher:
        needing = sorted(term for term in DIVERGENCES if weights.get(term, 0) > 0)
        if needing:
            raise DistillError(f"loss term(s) {needing} have weight > 0 but there is no teacher")
        weights = {term: w for term, w in weights.items() if term == "ce"}
    if not any(weights.values()):
        raise DistillError(f"loss weights must not be all 0, got {weights}")
    return {term: float(w) for term, w in weights.items()}
