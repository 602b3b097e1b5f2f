"""The target of several teachers: the weighted mixture of their distributions, dense or top-k.

Dense teachers (live models, full logits) mix exactly, at the loss temperature T:

    log p_mix,T = log Σ_i w_i · softmax(z_i / T)

The loss engine softens whatever teacher logits it gets by T (``divergences``), so the mixture is
handed over as ``T · log p_mix,T`` (``as_logits``): ``log_softmax(T · log p_mix,T / T) = log p_mix,T``,
the mixture itself, never softened twice.

Top-k teachers (``SparseTeacher``: an offline cache, or a live teacher cut to its top-k beside one)
know only their k most likely tokens and the mass of the rest (the tail). Their mixture lives on the
union of their supports: a token outside teacher i's top-k is counted in teacher i's tail (its own
probability there is unknown), so

    p_mix(j) = Σ_{i : j ∈ top_k(i)} w_i · p_i(j)           tail_mix = Σ_i w_i · tail_i

which sums to 1. The union has between max k_i and Σ k_i distinct tokens per position; the result
keeps the K most probable, K the smallest union in the batch (at least the largest k), and the
dropped ones' mass joins the tail, so every position has K real tokens and no padding. This is an
approximation: a token in only some teachers' top-k is under-counted by the others' (unknown) mass on
it, which the tail carries instead. The loss then treats the mixture as one cached teacher (``tail``:
bucket or renormalize; T applied to the coarse-grained distribution, as for a single cache).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError
from distill.teacher.outputs import SparseTeacher

TINY = torch.finfo(torch.float32).tiny  # the floor of a kept token's mass (its log stays finite)


def normalized(weights: Sequence[float]) -> list[float]:
    """The weights scaled to sum to 1 (each >= 0, not all 0: checked by the run, again here)."""
    total = float(sum(weights))
    if any(w < 0 for w in weights) or not total > 0:
        raise DistillError(f"teacher weights must be >= 0 and not all 0, got {list(weights)}")
    return [float(w) / total for w in weights]


def mixture_logprobs(logits: Sequence[Tensor], weights: Sequence[float], temperature: float = 1.0) -> Tensor:
    """``log Σ_i w_i softmax(z_i / T)`` in float32, ``[..., V]``; teachers of weight 0 are skipped.
    Accumulated one teacher at a time (two ``[..., V]`` buffers, whatever the number of teachers)."""
    out = None
    for z, w in zip(logits, normalized(weights)):
        if w == 0:
            continue
        part = F.log_softmax(z.float() / temperature, dim=-1).add_(math.log(w))
        out = part if out is None else torch.logaddexp(out, part, out=out)
    return out


def as_logits(log_mix: Tensor, temperature: float) -> Tensor:
    """Teacher logits whose softmax at ``temperature`` is ``exp(log_mix)`` (the engine divides by T)."""
    return log_mix * temperature if temperature != 1 else log_mix


def top_k_of(logits: Tensor, k: int) -> SparseTeacher:
    """A dense teacher as a top-k one (to mix with cached teachers): its k best log-probabilities."""
    values, indices = F.log_softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return SparseTeacher(values, indices)


def sparse_mixture(teachers: Sequence[SparseTeacher], weights: Sequence[float]) -> SparseTeacher:
    """The mixture of top-k teachers on the union of their supports (see the module docstring): the K
    most probable tokens of the union, best first, K = the smallest union over the batch's positions."""
    kept = [(t, w) for t, w in zip(teachers, normalized(weights)) if w > 0]
    lp = torch.cat([t.logprobs.float() + math.log(w) for t, w in kept], dim=-1)  # log(w_i p_i(j))
    idx = torch.cat([t.indices.long() for t, _ in kept], dim=-1)
    idx, order = idx.sort(dim=-1)
    lp = lp.gather(-1, order)
    first = torch.ones_like(idx, dtype=torch.bool)
    first[..., 1:] = idx[..., 1:] != idx[..., :-1]  # the first entry of each distinct token
    slot = first.long().cumsum(-1) - 1  # the union slot each entry adds its mass to
    shift = lp.amax(-1, keepdim=True)  # masses relative to the position's largest: no underflow at the top
    mass = torch.zeros_like(lp).scatter_add_(-1, slot, (lp - shift).exp())
    tokens = torch.zeros_like(idx).scatter_(-1, slot, idx)  # duplicates write the same id
    size = first.sum(-1, keepdim=True)  # distinct tokens per position
    mass = torch.where(torch.arange(idx.shape[-1], device=idx.device) < size, mass, -1.0)  # empty slots last
    top, pos = mass.topk(int(size.min()), dim=-1)
    return SparseTeacher(top.clamp_min(TINY).log() + shift, tokens.gather(-1, pos))


def tail_mass(teacher: SparseTeacher) -> Tensor:
    """``1 − Σ p`` of a top-k teacher: the probability it gives all tokens outside its top-k."""
    return -torch.expm1(torch.logsumexp(teacher.logprobs.float(), dim=-1))
