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

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from distill.errors import DistillError
from distill.losses.divergences import IGNORE_INDEX, logit_chunk
from distill.losses.terms import DIVERGENCES
from distill.teacher.outputs import SparseTeacher

# The fused loss's chunk grows to the hidden size, up to this many tokens (see ``fused_chunk``).
MAX_AUTO_CHUNK = 512


def fused_chunk(chunk_size: int, hidden: int) -> int:
    """Tokens per chunk of the fused loss as ``Objective`` runs it: ``loss.chunk_size``, raised to the
    hidden size (at most ``MAX_AUTO_CHUNK``). Each chunk adds its ``gᵀ @ h`` into the float32 ``[V × H]``
    weight gradient, one pass over it per chunk, so chunks of fewer tokens than H spend more on that pass
    than on their own logits. Measured (2 cores; bf16 autocast, forward KL + CE, the loss step alone):
    128k × 1,024 with 512 tokens 1.65 s at 128, 1.17 s at 256, 0.87 s at 512 (the logits path: 0.80 s);
    2,048 tokens 3.19 s at 512, 2.89 s at 1,024; 32k × 512 with 1,024 tokens 0.29 s at 256, 0.27 s at 512.
    The cap keeps the peak low: ``benchmarks/fused_linear_memory.py`` (4,096 × 1,024 × 128,256, fp32)
    gives 0.144 of the naive loss's peak at 512 (eager kernels; 0.091 compiled), 0.251 at 1,024."""
    return max(int(chunk_size), min(int(hidden), MAX_AUTO_CHUNK))


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
    kernel=None,
    teacher_topk: SparseTeacher | None = None,
    tail: str = "bucket",
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ weights[term] · mean(term)`` over the LM heads' logits, never materializing them.

    student_hidden ``[..., H_s]``: the final hidden state (after the final norm);
    student_weight ``[V_s, H_s]``: the LM head. Only its first ``vocab_size`` rows
    (default: all) are vocabulary; the rest is padding and gets zero gradient.
    teacher_hidden / teacher_weight ``[..., H_t]`` / ``[V_t, H_t]``: the frozen teacher
    (no gradients), or both ``None`` for CE only (divergences are then dropped), or for the
    cached teacher's ``teacher_topk`` ``[..., k]`` (compared under ``tail``, as in ``divergences``).
    ``V_t ≠ V_s`` needs an explicit ``vocab_size``. Terms are those of
    ``distill.losses.divergences`` (forward_kl, reverse_kl, jsd, tvd, ce), with the same
    definitions: divergences (× T²) averaged over ``mask`` ``[...]`` (bool; default:
    labelled tokens), CE over ``labels`` ≠ -100. Returns ``(loss, parts)``: a float32
    scalar and the detached mean of every term in ``weights``. The settings are trusted:
    ``Objective`` validates them once (``distill.losses.spec``); only shapes are checked here.

    Matmuls run in the inputs' dtype (the autocast dtype under autocast), softmax math in
    float32. Peak memory beyond the gradients themselves: a few ``[chunk_size × V]`` float32
    buffers (256 × 128,256 → ~125 MiB each). ``kernel``: see ``divergences.logit_chunk`` (``loss.compile``).
    """
    spec = _prepare(
        teacher_topk,
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        mask,
        weights,
        temperature,
        beta,
        vocab_size,
        chunk_size,
        student_bias,
        teacher_bias,
    )
    labels = labels.reshape(-1)
    mask = (labels != IGNORE_INDEX) if mask is None else mask.reshape(-1)
    n_labelled, n_distilled = max(1, int((labels != IGNORE_INDEX).sum())), max(1, int(mask.sum()))
    spec.counts = {term: n_labelled if term == "ce" else n_distilled for term in spec.weights}
    spec.coef = {term: w / spec.counts[term] for term, w in spec.weights.items()}
    spec.want_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (student_hidden, student_weight, student_bias)
    )
    spec.kernel, spec.tail = kernel, tail
    spec.topk = None if teacher_topk is None else teacher_topk.flatten_tokens()
    spec.dtypes = (
        _matmul_dtype(student_hidden, student_weight),
        None if teacher_hidden is None else _matmul_dtype(teacher_hidden, teacher_weight),
    )
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
    kernel: object = None  # logit_chunk's compiled kernels, or None (eager)
    topk: SparseTeacher | None = None  # the cached teacher's top-k, flattened to [tokens, k]
    tail: str = "bucket"


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
    # The compiled kernel writes d loss / d logits into one float32 chunk buffer that every chunk reuses
    # (the eager code builds it in place of its own softmax buffer, so it needs none).
    buffer = None
    if grads is not None and spec.kernel is not None:
        buffer = torch.empty(min(spec.chunk, h2.shape[0]), spec.vocab, device=h.device)
    for lo in range(0, h2.shape[0], spec.chunk):
        rows = slice(lo, lo + spec.chunk)
        h_rows = h2[rows].to(student.weight.dtype)
        s = student.logits(h_rows)
        t = spec.topk[rows] if spec.topk is not None else None if teacher is None else teacher.logits(th2[rows])
        part, g = logit_chunk(
            s,
            t,
            labels[rows],
            mask[rows],
            spec.coef,
            temperature=spec.temperature,
            beta=spec.beta,
            tail=spec.tail,
            want_grad=grads is not None,
            out=None if buffer is None else buffer[: h_rows.shape[0]],
            kernel=spec.kernel,
        )
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
    def cut(cls, w: Tensor, b: Tensor | None, vocab: int, dtype: torch.dtype) -> _Head:
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
        # The weight gradient is written by the first chunk and added to by the others: zeroing a [V × H]
        # float32 buffer first costs a pass over 512 MiB at 128k × 1,024 (7% of a step there), for nothing.
        self.w = torch.empty(w.shape, dtype=torch.float32, device=w.device) if needs[1] else None
        if self.w is not None:
            self.w[vocab:].zero_()  # padding rows: never a target, zero gradient
        self.w_written = False
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
            w = self.w[: self.vocab]
            if weight.dtype == torch.float32 and self.w_written:
                w.addmm_(g.t(), h_rows)
            elif weight.dtype == torch.float32:
                torch.mm(g.t(), h_rows, out=w)
            elif self.w_written:
                w.add_(g_mm.t() @ h_rows)
            else:
                w.copy_(g_mm.t() @ h_rows)
            self.w_written = True
        if self.b is not None:
            self.b[: self.vocab].add_(g.sum(0))

    def finish(self, hidden_shape) -> list[Tensor | None]:
        if self.w is not None and not self.w_written:  # no tokens at all
            self.w.zero_()
        gw = None if self.w is None else self.w.to(self.out_dtypes[0])
        gb = None if self.b is None else self.b.to(self.out_dtypes[1])
        gh = None if self.h is None else self.h.view(hidden_shape)
        return [gh, gw, gb]


def _prepare(topk, h, w, th, tw, labels, mask, weights, temperature, beta, vocab_size, chunk_size, b, tb) -> _Spec:
    """The ``_Spec`` of one call. Settings are trusted (validated once, by ``distill.losses.spec``);
    what is checked are the shapes that would otherwise be read wrongly without an error: tokens
    are flattened and cut into chunks by row, so hidden states, labels or a mask with other token
    dimensions would be misaligned; a bias of the wrong length would broadcast; a teacher half
    given, or heads of different lengths, would silently drop or cut vocabulary."""
    if (th is None) != (tw is None) or (th is None and tb is not None):
        raise DistillError(
            "teacher_hidden and teacher_weight must both be given or both be None (and teacher_bias only with them)"
        )
    tokens = h.shape[:-1]
    if topk is not None and (th is not None or topk.shape[:-1] != tokens):
        raise DistillError(
            f"teacher_topk {tuple(topk.shape)} must cover the student's tokens {tuple(tokens)}, without teacher_hidden"
        )
    if th is not None and th.shape[:-1] != tokens:
        raise DistillError(f"teacher_hidden tokens {tuple(th.shape[:-1])} != student's {tuple(tokens)}")
    if labels.shape != tokens or (mask is not None and mask.shape != tokens):
        raise DistillError(f"labels/mask shape {tuple(labels.shape)} != hidden tokens {tuple(tokens)}")
    for who, weight, bias in (("student", w, b), ("teacher", tw, tb)):
        if bias is not None and bias.shape != weight.shape[:1]:
            raise DistillError(f"{who}: bias shape {tuple(bias.shape)} != ({weight.shape[0]},)")
    if th is None and topk is None:  # nothing to compare with: the divergences drop out
        weights = {term: w for term, w in weights.items() if term not in DIVERGENCES}
    return _Spec(weights, _check_vocab(vocab_size, w, tw), float(temperature), float(beta), int(chunk_size))


def _check_vocab(vocab_size: int | None, w: Tensor, tw: Tensor | None) -> int:
    rows = w.shape[0] if tw is None else min(w.shape[0], tw.shape[0])
    if vocab_size is None:
        if tw is not None and tw.shape[0] != w.shape[0]:
            raise DistillError(
                f"student and teacher LM heads have {w.shape[0]} and {tw.shape[0]} rows: "
                "pass vocab_size (the real vocabulary; extra rows are padding)"
            )
        return rows
    if not 1 <= vocab_size <= rows:
        raise DistillError(f"vocab_size {vocab_size} must be in [1, {rows}] (the LM heads' rows)")
    return int(vocab_size)
