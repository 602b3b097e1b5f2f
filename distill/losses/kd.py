"""Forward-KL distillation mixed with next-token cross-entropy.

``forward_kl`` and ``cross_entropy`` are the plain references. ``kd_ce_loss`` computes
the same weighted sum but fused and chunked over tokens: it works in float32 one chunk
at a time and keeps only the gradient with respect to the student logits, never the
softmax intermediates of the whole batch. That is what makes the distillation step
cost little more than a plain CE step (Liger-Kernel's trick, on logits). Written by
hand because no library here offers a fused KD+CE loss that runs on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError

IGNORE_INDEX = -100


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Mean over tokens of KL(p_teacher || p_student) at temperature T, scaled by T² (Hinton et al. 2015)."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = (t.exp() * (t - s)).sum(-1)
    if mask is not None:
        per_token = per_token[mask]
    return per_token.mean() * temperature**2


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(student_logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX)


def kd_ce_reference(student_logits, teacher_logits, labels, kl_weight, ce_weight, temperature) -> Tensor:
    mask = labels != IGNORE_INDEX
    loss = ce_weight * cross_entropy(student_logits, labels)
    if teacher_logits is not None and kl_weight:
        loss = loss + kl_weight * forward_kl(student_logits, teacher_logits, temperature, mask)
    return loss


class _FusedKDCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, t, labels, kl_w, ce_w, T, chunk):
        s2, y = s.reshape(-1, s.shape[-1]), labels.reshape(-1)
        t2 = t.reshape(-1, t.shape[-1]) if t is not None else None
        valid = y != IGNORE_INDEX
        inv_n = 1.0 / max(1, int(valid.sum()))
        grad = torch.empty_like(s2) if s.requires_grad else None
        kl_sum = ce_sum = 0.0
        for i in range(0, s2.shape[0], chunk):
            sl = slice(i, i + chunk)
            kl, ce, g = _chunk(s2[sl], None if t2 is None else t2[sl], y[sl], valid[sl], kl_w, ce_w, T, grad is not None)
            kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
            if grad is not None:
                grad[sl] = g.mul_(inv_n)
        ctx.save_for_backward(grad if grad is not None else s2.new_empty(0))
        ctx.shape = s.shape
        kl = (kl_sum * (inv_n * T**2)).float()
        ce = (ce_sum * inv_n).float()
        loss = kl_w * kl + ce_w * ce if t is not None else ce_w * ce
        ctx.mark_non_differentiable(kl, ce)
        return loss, kl, ce

    @staticmethod
    def backward(ctx, grad_loss, _gkl, _gce):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).view(ctx.shape), None, None, None, None, None, None


def _chunk(s, t, y, valid, kl_w, ce_w, T, want_grad):
    """Loss sums and d(loss_sum)/d(student logits) for one chunk of tokens, in float32.

    The gradient of ``ce_w·CE + kl_w·T²·KL`` is ``ce_w·(q − onehot) + kl_w·T·(q_T − p)``;
    everything is updated in place so a chunk holds about three vocab-sized buffers.
    """
    s = s.float()
    log_q = F.log_softmax(s, dim=-1)
    target = torch.where(valid, y, 0).unsqueeze(-1)
    ce = -(log_q.gather(-1, target).squeeze(-1) * valid).sum()
    kl = torch.zeros((), device=s.device)
    q = log_q.exp() if want_grad or t is not None else None
    g = None
    if t is not None:
        log_p = F.log_softmax(t.float() / T if T != 1 else t.float(), dim=-1)
        p = log_p.exp()
        log_qT = log_q if T == 1 else F.log_softmax(s / T, dim=-1)
        kl = (log_p.sub_(log_qT).mul_(p).sum(-1) * valid).sum()
        if want_grad:
            if T == 1:  # q_T == q: one fused pass
                g = q.mul_(ce_w + kl_w).sub_(p, alpha=kl_w)
            else:
                g = q.mul_(ce_w).add_(log_qT.exp_().sub_(p), alpha=kl_w * T)
    elif want_grad:
        g = q.mul_(ce_w)
    if g is not None:
        g.scatter_add_(-1, target, torch.full_like(target, -ce_w, dtype=g.dtype))
        if not bool(valid.all()):
            g[~valid] = 0
    return kl, ce, g


def kd_ce_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused ``kl_weight·T²·KL + ce_weight·CE``; returns (loss, kl, ce), the last two detached for logging."""
    return _FusedKDCE.apply(student_logits, teacher_logits, labels, kl_weight, ce_weight, temperature, chunk_size)


class KDLoss(torch.nn.Module):
    """The configured objective; ``teacher_logits=None`` trains with CE only (teacher or control runs)."""

    def __init__(self, kl_weight: float = 1.0, ce_weight: float = 0.0, temperature: float = 1.0, chunk_size: int = 256):
        super().__init__()
        if temperature <= 0:
            raise DistillError(f"loss.temperature must be > 0, got {temperature}")
        if kl_weight < 0 or ce_weight < 0 or kl_weight + ce_weight == 0:
            raise DistillError(f"loss weights must be >= 0 and not both 0 (kl={kl_weight}, ce={ce_weight})")
        self.kl_weight, self.ce_weight, self.temperature, self.chunk_size = kl_weight, ce_weight, temperature, chunk_size

    def forward(self, student_logits, teacher_logits, labels) -> dict[str, Tensor]:
        if teacher_logits is None:
            loss, _, ce = kd_ce_loss(student_logits, None, labels, 0.0, 1.0, 1.0, self.chunk_size)
            return {"loss": loss, "ce": ce}
        loss, kl, ce = kd_ce_loss(
            student_logits, teacher_logits, labels, self.kl_weight, self.ce_weight, self.temperature, self.chunk_size
        )
        return {"loss": loss, "kl": kl, "ce": ce}
