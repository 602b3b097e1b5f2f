"""The hot chunk kernels of ``divergences.logit_chunk``, compiled by ``torch.compile``.

Each chunk of the default objective (forward KL + CE against a live teacher, or against the
top-k cache) is a handful of passes over two ``[chunk × V]`` float32 tensors in eager PyTorch:
log-softmax of both, two exps, the KL product and sum, the gradient, its copy into the
gradient buffer; at vocabulary / hidden ≥ 32 those passes cost as much as the LM head's
matmuls (issue 22). Inductor fuses them into a few loops over the chunk (C++ with SIMD on CPU,
Triton on GPU) that write the gradient straight into the caller's buffer. Liger-Kernel does
the same fusion by hand in Triton, which cannot run on CPU; hence these.

The kernels restate the eager functions of ``divergences`` (the specification) in a form
Inductor fuses well, and ``tests/losses/test_compiled.py`` checks values and gradients
against them. Measured per 256-token chunk, one thread, CPU time (``benchmarks/vocab_scaling.py``
measures whole steps): forward KL + CE 3-4x faster than eager at 8k to 128k, CE alone 3-4x, the
cache's bucket kernel 2.1x at 128k and 1.5x at 32k, even at 8k. Coefficients and the temperature are 0-dim tensors, so a loss schedule that
changes them every step does not recompile; only ``T == 1`` (one exp fewer) and ``want_grad``
select a graph. Rows are traced static first and dynamic after the first other size (the
last chunk), so a run compiles each kernel at most twice.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from distill.losses.divergences import IGNORE_INDEX, TAIL_EPS
from distill.teacher.outputs import SparseTeacher

log = logging.getLogger(__name__)


def _targets(y: Tensor) -> tuple[Tensor, Tensor]:
    valid = y != IGNORE_INDEX
    return valid, torch.where(valid, y, 0).unsqueeze(-1)


def _onehot(x: Tensor, target: Tensor) -> Tensor:
    # A comparison Inductor fuses into the gradient loop (a scatter would be one more pass).
    return torch.arange(x.shape[-1], device=x.device) == target


def _forward_kl_ce(s, t, y, m, c_ce, c_kl, T, unit_T: bool, out: Tensor | None):
    """``divergences._forward_kl_ce``: sums of CE and T²·KL(p_T ‖ q_T); gradient into ``out``."""
    x = s.float()
    valid, target = _targets(y)
    log_q = torch.log_softmax(x, -1)
    log_p = torch.log_softmax(t.float() if unit_T else t.float() / T, -1)
    p = log_p.exp()
    log_qT = log_q if unit_T else torch.log_softmax(x / T, -1)
    ce = -torch.where(valid, log_q.gather(-1, target).squeeze(-1), 0.0).sum()
    kl = torch.where(m, (p * (log_p - log_qT)).sum(-1), 0.0).sum() * (T * T)
    if out is not None:
        w_ce = (c_ce * valid).unsqueeze(-1)
        w_kl = (c_kl * T * m).unsqueeze(-1)
        out.copy_(log_q.exp() * w_ce - w_ce * _onehot(x, target) + (log_qT.exp() - p) * w_kl)
    return ce, kl


def _cross_entropy(s, y, c_ce, out: Tensor | None):
    """``divergences._cross_entropy``: the CE sum; gradient ``c·(q − onehot)`` into ``out``."""
    x = s.float()
    valid, target = _targets(y)
    log_q = torch.log_softmax(x, -1)
    ce = -torch.where(valid, log_q.gather(-1, target).squeeze(-1), 0.0).sum()
    if out is not None:
        w = (c_ce * valid).unsqueeze(-1)
        out.copy_((log_q.exp() - _onehot(x, target)) * w)
    return ce


def _bucket_forward_kl_ce(s, lp, idx, y, m, c_ce, c_kl, out: Tensor | None):
    """``divergences._bucket_forward_kl_ce`` (the cache's top-k plus one tail bucket, T = 1): CE and KL
    sums; gradient ``q·row − c_ce·onehot`` into ``out``, and the correction ``w·(q_k·ratio − p_k)`` of
    the k tokens returned for the caller to add (a scatter inside the graph made Inductor copy the
    whole gradient once more).

    The student's tail mass is ``(S − S_k) / S`` with ``S = Σ exp(x − max)`` and ``S_k`` its k terms,
    both summed in float64: the k terms are the same float32 numbers in both sums, so the difference
    keeps the tail's own precision (the eager kernel zeroes the k entries and sums instead: two
    scatters over ``[chunk × V]``). Three passes over the chunk: max, sum, gradient."""
    x = s.float()
    keep = m.unsqueeze(-1)
    lp, idx = torch.where(keep, lp.float(), 0.0), torch.where(keep, idx.long(), 0)
    valid, target = _targets(y)
    top = x.amax(-1, keepdim=True)
    total = torch.exp(x - top).double().sum(-1, keepdim=True)
    x_k = x.gather(-1, idx)
    in_k = torch.exp(x_k - top).double().sum(-1, keepdim=True)
    lse = top + total.log().float()
    log_qk = x_k - lse
    q_tail = ((total - in_k) / total).float().clamp(min=torch.finfo(torch.float32).tiny)
    p_tail = (-torch.expm1(torch.logsumexp(lp, dim=-1, keepdim=True))).clamp(min=TAIL_EPS)
    log_p = torch.log_softmax(torch.cat([lp, p_tail.log()], -1), dim=-1)
    p = log_p.exp()
    kl = torch.where(m, (p * (log_p - torch.cat([log_qk, q_tail.log()], -1))).sum(-1), 0.0).sum()
    ce = -torch.where(valid, x.gather(-1, target).squeeze(-1) - lse.squeeze(-1), 0.0).sum()
    if out is None:
        return ce, kl, None
    w_kl, w_ce = (c_kl * m).unsqueeze(-1), (c_ce * valid).unsqueeze(-1)
    ratio = p[:, -1:] / q_tail
    out.copy_(torch.exp(x - lse) * (w_kl * (1 - ratio) + w_ce) - w_ce * _onehot(x, target))
    return ce, kl, w_kl * (log_qk.exp() * ratio - p[:, :-1])


# ``loss.compile=auto`` compiles from this vocabulary up. At 4,096 × 256 (the quickstart) the eager step
# is 0.97 of the floor (issue 22) and a compile would add seconds to every short run.
COMPILE_FROM_VOCAB = 8192
COMPILE_MODES = ("auto", True, False)
_KERNELS = {"forward_kl_ce": _forward_kl_ce, "ce": _cross_entropy, "bucket": _bucket_forward_kl_ce}
_failed: list[str] = []  # set when compiling failed once in this process: eager from then on


@functools.cache
def compiled(name: str):
    """The compiled kernel ``name`` (one compiled function per process, shared by every call)."""
    return torch.compile(_KERNELS[name])


def chunk_kernel(s, t, y, m, coef, temperature, tail, want_grad, out):
    """``logit_chunk``'s ``kernel``: the compiled kernel where one exists for this chunk, else None (the
    eager code runs): forward KL and/or CE against a live teacher or none (the default objective and
    teacher-free training), and forward KL (+ CE) against the top-k cache in ``bucket`` mode at T = 1
    (the cache's default)."""
    name = _kernel_for(t, coef, temperature, tail, s.shape[-1])
    if name is None:
        return None
    if want_grad and out is None:
        out = torch.empty(s.shape, dtype=torch.float32, device=s.device)
    grad_out = out if want_grad else None
    c_ce, c_kl = scalar(coef.get("ce", 0.0), s), scalar(coef.get("forward_kl", 0.0), s)
    try:
        with torch.autocast(s.device.type, enabled=False):  # the kernels choose their dtypes (float32 math)
            if name == "ce":
                return {"ce": compiled("ce")(s, y, c_ce, grad_out)}, grad_out
            if name == "bucket":
                ce, kl, on_k = compiled("bucket")(s, t.logprobs, t.indices, y, m, c_ce, c_kl, grad_out)
                if grad_out is not None:  # rows not distilled add zeros (their ids may repeat)
                    grad_out.scatter_add_(-1, t.indices.long(), on_k.to(grad_out.dtype))
            else:
                unit = temperature == 1
                ce, kl = compiled(name)(s, t, y, m, c_ce, c_kl, scalar(temperature, s), unit, grad_out)
    except Exception as e:  # no C++ compiler (CPU) or no Triton (GPU): the eager kernels are the same math
        _failed.append(repr(e))
        log.warning("loss.compile: compiling the loss kernel failed (%s); running it eagerly", str(e).splitlines()[0])
        return None
    return ({"ce": ce, "forward_kl": kl} if "ce" in coef else {"forward_kl": kl}), grad_out


def _kernel_for(t, coef, temperature, tail, vocab) -> str | None:
    divs = set(coef) - {"ce"}
    if _failed:
        return None
    if isinstance(t, SparseTeacher):
        bucket = divs == {"forward_kl"} and tail == "bucket" and temperature == 1 and t.indices.shape[-1] < vocab
        return "bucket" if bucket else None
    if not divs <= {"forward_kl"}:
        return None
    return "ce" if t is None or not divs else "forward_kl_ce"


def scalar(value: float, like: Tensor) -> Tensor:
    """A coefficient as the 0-dim float32 tensor the kernels take (a Python float would be traced
    as a constant, and each new value would recompile)."""
    return torch.tensor(float(value), dtype=torch.float32, device=like.device)
