"""``loss.prefix_kl.within``: the forward KL inside the prefix class of each span's next text.

``prefix_kl`` compares the two models' next-token distributions summed by prefix class; how the student
spreads a class's mass over its own tokens (``.append``, ``.items``, ``.``) is left to CE. At a span
whose teacher token is exactly its class's string c (a GPT-2-style ``.``), the teacher's next row says
what follows c, so both sides have a distribution over c's subclasses (``distill.align.within``)::

    P(k) ∝ Σ_{t in c, t ≠ c, sub(t) = k} p₁(t) + p₁(c) · Σ_{u: sub_c(u) = k} p₂(u)
    Q(k) ∝ Σ_{s in c, sub(s) = k} q(s)

p₁ the teacher's row that predicts the span (the one ``prefix_kl`` reads), p₂ its next row (after c),
q the student's row. The KL over a partition finer than the classes, c split into its subclasses,
is the KL over the classes plus P(c) · KL(P || Q) (the chain rule of the KL; P(c) the teacher's
probability of the class), so this term is P(c) · KL(P || Q), averaged over *all* of ``prefix_kl``'s
spans by their weights (0 where c does not split) and scaled by T², and ``prefix_kl`` + this term is
the forward KL over that finer partition (without ``cuts``; the tests check it). Only the class the
text goes on with can be split (the teacher's next row is read after the token it wrote). Measured
without the P(c) factor (each split span at full weight): worse than ``prefix_kl`` alone.
Plain autograd: a few hundred spans per batch, over G subclasses and the student's vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.divergences import TAIL_EPS


class Within:
    """``WithinClasses`` on the logits' device."""

    def __init__(self, tables, teacher_prefix: Tensor, device):
        as_tensor = lambda a: torch.as_tensor(a, device=device)
        self.count = tables.count
        self.owner, self.student, self.teacher_rest = map(
            as_tensor, (tables.owner, tables.student, tables.teacher_rest)
        )
        self.exact, self.split_row, self.next_map = map(
            as_tensor, (tables.teacher_exact, tables.split_row, tables.next_map)
        )
        self.teacher_prefix = teacher_prefix

    def spans(self, first_ids: Tensor) -> Tensor:
        """[K] bool: the spans whose teacher token is its class's string, in a class that splits."""
        return self.exact[first_ids] & (self.split_row[self.teacher_prefix[first_ids]] >= 0)


def within_kl(log_q: Tensor, log_p1: Tensor, log_p2: Tensor, first_ids: Tensor, within: Within) -> Tensor:
    """[c] P(c) · KL(P || Q) inside each span's class c: the student's [c, Vs] and the teacher's two
    [c, Vt] rows (log-probabilities at T), for spans that ``Within.spans`` admits."""
    G = within.count
    cls = within.teacher_prefix[first_ids]
    p1 = log_p1.exp()
    lead = p1.gather(1, first_ids[:, None])  # the mass of the teacher token c itself, spread by its next row
    p = p1.new_zeros(len(p1), G + 1).index_add_(1, within.teacher_rest, p1)
    p.scatter_add_(1, within.next_map[within.split_row[cls]], log_p2.exp() * lead)
    q = log_q.new_zeros(len(log_q), G + 1).index_add_(1, within.student, log_q.exp())
    own = within.owner[None, :] == cls[:, None]  # [c, G] the subclasses of each span's class
    p = p[:, :G] * own
    mass = p.sum(-1, keepdim=True)  # P(c): the teacher's tokens of the class, its own c's next row summing to 1
    p = p / mass.clamp_min(TAIL_EPS)
    q = q[:, :G] * own
    q = (q / q.sum(-1, keepdim=True).clamp_min(TAIL_EPS)).clamp_min(TAIL_EPS)
    return mass.squeeze(-1) * (torch.xlogy(p, p) - p * q.log()).sum(-1)


def within_loss(
    s2: Tensor, teacher_rows, aligned, span_w: Tensor, within: Within, T: float, chunk: int, teacher_len: int
) -> Tensor:
    """Σ over admitted spans of span_w · T² · ``within_kl`` / Σ span_w over every span (prefix_kl's
    denominator).
    ``teacher_rows(rows)``: the teacher's [n, Vt] float32 logits of those flattened rows, ``teacher_len``
    rows per sequence (a span whose teacher token is the last one with a row has no next row: left out)."""
    first = aligned.teacher.first_ids.to(s2.device)
    has_next = (aligned.teacher.rows.to(s2.device) % teacher_len) + 1 < teacher_len
    keep = (within.spans(first) & has_next & (span_w > 0)).nonzero().squeeze(-1)
    total, weight = s2.new_zeros((), dtype=torch.float32), span_w.sum()
    for i in range(0, len(keep), chunk):
        k = keep[i : i + chunk]
        t_rows = aligned.teacher.rows.to(s2.device)[k]
        log_q = torch.log_softmax(s2[aligned.student.rows.to(s2.device)[k]].float() / T, dim=-1)
        log_p1 = torch.log_softmax(teacher_rows(t_rows) / T, dim=-1)
        log_p2 = torch.log_softmax(teacher_rows(t_rows + 1) / T, dim=-1)  # after the teacher's token c
        total = total + (within_kl(log_q, log_p1, log_p2, first[k], within) * span_w[k]).sum()
    return total * T**2 / weight.clamp_min(TAIL_EPS)
