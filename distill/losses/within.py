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
text goes on with can be split (a next row is read after the token the text has).

``rows=both`` also splits the other way: at a span whose *student* token is its class's string (``\\n``)
where the teacher has longer tokens of the class (``\\n`` + indentation), Q is built from the student's
two rows (its row after c inside the span, which no other term reads) and P from the teacher's one row;
the two splits are two refinements, their terms added. Measured without the P(c) factor (each split span
at full weight): worse than ``prefix_kl`` alone. Plain autograd: a few hundred spans per batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.divergences import TAIL_EPS

WITHIN_ROWS = ("teacher", "both")  # loss.prefix_kl.within_rows: whose next row splits the classes


class Within:
    """``WithinClasses`` on the logits' device, with the two-row side's token classes."""

    def __init__(self, tables, two_prefix: Tensor, device):
        as_tensor = lambda a: torch.as_tensor(a, device=device)
        self.count = tables.count
        self.owner, self.one_row, self.rest = map(as_tensor, (tables.owner, tables.one_row, tables.rest))
        self.exact, self.split_row, self.next_map = map(as_tensor, (tables.exact, tables.split_row, tables.next_map))
        self.two_prefix = two_prefix

    def spans(self, first_ids: Tensor) -> Tensor:
        """[K] bool: the spans whose two-row token is its class's string, in a class that splits."""
        return self.exact[first_ids] & (self.split_row[self.two_prefix[first_ids]] >= 0)


def two_row_mass(log_a1: Tensor, log_a2: Tensor, first_ids: Tensor, within: Within) -> Tensor:
    """[c, G + 1] the two-row side's mass per subclass: its longer tokens of the class at its first row,
    its token c's probability spread by its next row."""
    a1 = log_a1.exp()
    lead = a1.gather(1, first_ids[:, None])
    mass = a1.new_zeros(len(a1), within.count + 1).index_add_(1, within.rest, a1)
    cls = within.two_prefix[first_ids]
    return mass.scatter_add_(1, within.next_map[within.split_row[cls]], log_a2.exp() * lead)


def one_row_mass(log_b: Tensor, within: Within) -> Tensor:
    """[c, G + 1] the one-row side's mass per subclass."""
    return log_b.new_zeros(len(log_b), within.count + 1).index_add_(1, within.one_row, log_b.exp())


def split_kl(p: Tensor, q: Tensor, cls: Tensor, within: Within) -> Tensor:
    """[c] P(c) · KL(P || Q) over the subclasses of each span's class c (teacher's P, student's Q)."""
    own = within.owner[None, :] == cls[:, None]  # [c, G] the subclasses of each span's class
    p, q = p[:, : within.count] * own, q[:, : within.count] * own
    mass = p.sum(-1, keepdim=True)  # P(c): the teacher's tokens of the class (a next row sums to 1)
    p = p / mass.clamp_min(TAIL_EPS)
    q = (q / q.sum(-1, keepdim=True).clamp_min(TAIL_EPS)).clamp_min(TAIL_EPS)
    return mass.squeeze(-1) * (torch.xlogy(p, p) - p * q.log()).sum(-1)


def within_kl(log_q: Tensor, log_p1: Tensor, log_p2: Tensor, first_ids: Tensor, within: Within) -> Tensor:
    """[c] P(c) · KL(P || Q) inside each span's class c split by the teacher's next row: the student's
    [c, Vs] and the teacher's two [c, Vt] rows (log-probabilities at T), for spans ``Within.spans`` admits."""
    cls = within.two_prefix[first_ids]
    return split_kl(two_row_mass(log_p1, log_p2, first_ids, within), one_row_mass(log_q, within), cls, within)


def within_kl_by_student(log_p: Tensor, log_q1: Tensor, log_q2: Tensor, first_ids: Tensor, within: Within) -> Tensor:
    """The same split by the student's next row: the teacher's [c, Vt] row, the student's two [c, Vs] rows
    and first tokens."""
    cls = within.two_prefix[first_ids]
    return split_kl(one_row_mass(log_p, within), two_row_mass(log_q1, log_q2, first_ids, within), cls, within)


def within_loss(s2: Tensor, teacher_rows, aligned, span_w: Tensor, splits: dict, T: float, chunk: int, lens) -> Tensor:
    """Σ over the admitted spans of each split ({"teacher": Within, "student": Within}) of span_w · T² ·
    its term / Σ span_w over every span (prefix_kl's denominator). ``teacher_rows(rows)``: the teacher's
    [n, Vt] float32 logits of those flattened rows; ``lens``: {side: rows per sequence} (a span whose
    two-row token is the last one with a row has no next row: left out)."""
    total = s2.new_zeros((), dtype=torch.float32)
    t_rows_all, s_rows_all = aligned.teacher.rows.to(s2.device), aligned.student.rows.to(s2.device)
    student_rows = lambda r: torch.log_softmax(s2[r].float() / T, dim=-1)
    teacher_log = lambda r: torch.log_softmax(teacher_rows(r) / T, dim=-1)
    for side, within in splits.items():
        two = aligned.teacher if side == "teacher" else aligned.student
        first, rows = two.first_ids.to(s2.device), two.rows.to(s2.device)
        has_next = rows % lens[side] + 1 < lens[side]
        keep = (within.spans(first) & has_next & (span_w > 0)).nonzero().squeeze(-1)
        for i in range(0, len(keep), chunk):
            k = keep[i : i + chunk]
            log_q, log_p = student_rows(s_rows_all[k]), teacher_log(t_rows_all[k])
            if side == "teacher":
                value = within_kl(log_q, log_p, teacher_log(t_rows_all[k] + 1), first[k], within)
            else:
                value = within_kl_by_student(log_p, log_q, student_rows(s_rows_all[k] + 1), first[k], within)
            total = total + (value * span_w[k]).sum()
    return total * T**2 / span_w.sum().clamp_min(TAIL_EPS)
