"""Dual-space KD across vocabularies (DSKD: Zhang et al., EMNLP 2024), on the aligned spans.

Every other cross-vocabulary term compares the two models' *output distributions*, each over its own
vocabulary, and so has to decide which student tokens stand for which teacher tokens (shared strings,
prefix classes). DSKD compares them in one vocabulary at a time instead, through the models' final
hidden states, and needs no token mapping at all:

- **teacher space**: the student's final hidden state, through a learned projection ``s2t``, read by
  the teacher's own (frozen) LM head: a distribution over the teacher's vocabulary, pulled to the
  teacher's own by forward KL. The gradient reaches the student's trunk through ``s2t``.
- **student space**: the teacher's final hidden state, through ``t2s``, read by the student's LM head
  (detached): a distribution over the student's vocabulary. ``t2s`` learns it by CE on the student's
  own next token; the student is pulled toward it (forward KL, the target detached) only where it
  predicts that token (DSKD's ``t2s_acc_mask``: a wrong probe teaches nothing).

DSKD needs cross-model attention to pair positions of two tokenizations; here the spans of
``distill.align`` pair them exactly: at a span's first rows both models have read the same text, so
the student's row and the teacher's row predict the same next characters. DSKD's total, per span
(its ``kd_loss = t2s_ce + t2s_kd + s2t_kd``)::

    teacher space   KL(p_T ‖ softmax(W_T · s2t(h_S) / T))                         · T²
    student space   CE(W_S · t2s(h_T), y_S) + [argmax = y_S] · KL(softmax(z / T) ‖ softmax(z_S / T)) · T²
                    (z = W_S · t2s(h_T), detached; z_S the student's own logits)

averaged over the spans weighted by ``AlignedBatch.weight``. Both heads are used frozen (the teacher's
is frozen anyway; the student's is detached as in DSKD, so the probe cannot move the student's head).
The projections live in the objective, train with the student and are never exported.

Chunked over spans with activation checkpointing: each chunk's [chunk × vocabulary] logits exist only
while that chunk is computed (forward, and again in backward), as the other terms bound their memory.
The plain reference these are tested against: ``tests/losses/test_dual_space.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from distill.align.batch import AlignedBatch

SPACES = ("both", "teacher", "student")  # loss.dual_space.spaces: which of DSKD's two halves run


def kl_rows(target_logprobs: Tensor, logprobs: Tensor) -> Tensor:
    """KL(p ‖ q) per row, from log-probabilities (0 · log 0 = 0 where the target has no mass)."""
    p = target_logprobs.exp()
    return torch.where(p > 0, p * (target_logprobs - logprobs), 0.0).sum(-1)


def teacher_space(student_h: Tensor, teacher_logits: Tensor, s2t: nn.Module, teacher_head: Tensor, T: float) -> Tensor:
    """Per span: KL(teacher ‖ the student's hidden state read by the teacher's head) · T²."""
    dtype = s2t.weight.dtype  # the projections' (float32; float64 in the reference tests)
    logits = s2t(student_h.to(dtype)) @ teacher_head.detach().to(dtype).T  # frozen, whatever its requires_grad
    target = F.log_softmax(teacher_logits.to(dtype) / T, dim=-1)
    return kl_rows(target, F.log_softmax(logits / T, dim=-1)) * T * T


def student_space(
    teacher_h: Tensor, student_logits: Tensor, targets: Tensor, t2s: nn.Module, student_head: Tensor, T: float
) -> tuple[Tensor, Tensor]:
    """Per span: (the probe's CE on the student's next token + the student's KL to the probe where the
    probe is right, · T²; whether the probe is right)."""
    dtype = t2s.weight.dtype
    probe = t2s(teacher_h.to(dtype)) @ student_head.detach().to(dtype).T
    ce = F.cross_entropy(probe, targets, reduction="none")
    right = probe.argmax(-1) == targets
    target = F.log_softmax(probe.detach() / T, dim=-1)
    kl = kl_rows(target, F.log_softmax(student_logits.to(dtype) / T, dim=-1)) * T * T
    return ce + torch.where(right, kl, 0.0), right.float()


class DualSpace(nn.Module):
    """DSKD's two projections, sized to the models' widths, and the term on an ``AlignedBatch``."""

    def __init__(self, student_width: int, teacher_width: int, spaces: str = "both"):
        super().__init__()
        self.spaces = spaces
        self.s2t = nn.Linear(student_width, teacher_width, bias=False)
        self.t2s = nn.Linear(teacher_width, student_width, bias=False)

    def forward(self, student, teacher, aligned: AlignedBatch, temperature: float, chunk: int) -> tuple[Tensor, dict]:
        """``student`` / ``teacher``: the objective's ``Outputs`` (logits, hidden states, LM head of each).
        Returns the weighted mean over spans and its parts (detached). In float32 whatever the models'
        precision: autocast (bf16-mixed) would run the projections and heads in bf16."""
        with torch.autocast(student.logits.device.type, enabled=False):
            return self._spans(student, teacher, aligned, temperature, chunk)

    def _spans(self, student, teacher, aligned: AlignedBatch, temperature: float, chunk: int) -> tuple[Tensor, dict]:
        s_rows, t_rows = aligned.student.rows, aligned.teacher.rows
        s_hidden = student.hidden_states[-1].flatten(0, 1)  # the final norm's output (transformers 5)
        t_hidden = teacher.hidden_states[-1].flatten(0, 1)
        s_logits = student.logits.flatten(0, 1)
        t_logits = teacher.logits.flatten(0, 1)
        t_head = teacher.head_weight[: t_logits.shape[-1]]  # LM-head rows past the tokenizer are padding
        s_head = student.head_weight[: s_logits.shape[-1]]
        weight = aligned.weight.to(s_logits.device)
        total_t = total_s = right = s_logits.new_zeros(())
        for i in range(0, len(s_rows), chunk):
            w = weight[i : i + chunk]
            sr, tr = s_rows[i : i + chunk], t_rows[i : i + chunk]
            if self.spaces != "student":
                per = checkpoint(
                    teacher_space, s_hidden[sr], t_logits[tr], self.s2t, t_head, temperature, use_reentrant=False
                )
                total_t = total_t + (w * per).sum()
            if self.spaces != "teacher":
                per, ok = checkpoint(
                    student_space,
                    t_hidden[tr],
                    s_logits[sr],
                    aligned.student.first_ids[i : i + chunk],
                    self.t2s,
                    s_head,
                    temperature,
                    use_reentrant=False,
                )
                total_s, right = total_s + (w * per).sum(), right + (w * ok).sum()
        denom = weight.sum().clamp_min(1e-8)
        value = (total_t + total_s) / denom
        parts = {
            "dual_space.teacher_space": total_t.detach() / denom,
            "dual_space.student_space": total_s.detach() / denom,
        }
        if self.spaces != "teacher":
            parts["dual_space.probe_accuracy"] = right.detach() / denom
        return value, parts
