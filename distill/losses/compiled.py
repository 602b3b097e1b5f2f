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
against them. Coefficients and the temperature are 0-dim tensors, so a loss schedule that
changes them every step does not recompile; only ``T == 1`` (one exp fewer) and ``want_grad``
select a graph. Rows are traced static first and dynamic after the first other size (the
last chunk), so a run compiles each kernel at most twice.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from distill.losses.divergences import IGNORE_INDEX
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


# ``loss.compile=auto`` compiles from this vocabulary up. At 4,096 × 256 (the quickstart) the eager step
# is 0.97 of the floor (issue 22) and a compile would add seconds to every short run.
COMPILE_FROM_VOCAB = 8192
COMPILE_MODES = ("auto", True, False)
_KERNELS = {"forward_kl_ce": _forward_kl_ce, "ce": _cross_entropy}
_failed: list[str] = []  # set when compiling failed once in this process: eager from then on


@functools.cache
def compiled(name: str):
    """The compiled kernel ``name`` (one compiled function per process, shared by every call)."""
    return torch.compile(_KERNELS[name])


def chunk_kernel(s, t, y, m, coef, temperature, want_grad, out):
    """``logit_chunk``'s ``kernel``: the compiled kernel where one exists for this chunk (dense forward
    KL and/or CE, the default objective and the teacher-free one), else None (the eager code runs).

    The top-k cache's bucket kernel is not compiled: Inductor's scatters made it 4× slower than the
    eager one, which already costs less than eager CE alone (``benchmarks/vocab_scaling.py``)."""
    divs = set(coef) - {"ce"}
    if _failed or isinstance(t, SparseTeacher) or not divs <= {"forward_kl"}:
        return None
    if want_grad and out is None:
        out = torch.empty(s.shape, dtype=torch.float32, device=s.device)
    grad_out = out if want_grad else None
    try:
        with torch.autocast(s.device.type, enabled=False):  # the kernels choose their dtypes (float32 math)
            if t is None or not divs:
                sums = {"ce": compiled("ce")(s, y, scalar(coef.get("ce", 0.0), s), grad_out)}
            else:
                ce, kl = compiled("forward_kl_ce")(
                    s,
                    t,
                    y,
                    m,
                    scalar(coef.get("ce", 0.0), s),
                    scalar(coef["forward_kl"], s),
                    scalar(temperature, s),
                    temperature == 1,
                    grad_out,
                )
                sums = {"ce": ce, "forward_kl": kl} if "ce" in coef else {"forward_kl": kl}
    except Exception as e:  # no C++ compiler (CPU) or no Triton (GPU): the eager kernels are the same math
        _failed.append(repr(e))
        log.warning("loss.compile: compiling the loss kernel failed (%s); running it eagerly", str(e).splitlines()[0])
        return None
    return sums, grad_out


def scalar(value: float, like: Tensor) -> Tensor:
    """A coefficient as the 0-dim float32 tensor the kernels take (a Python float would be traced
    as a constant, and each new value would recompile)."""
    return torch.tensor(float(value), dtype=torch.float32, device=like.device)
