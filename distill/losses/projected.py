"""Next-token distributions compared across vocabularies by projection: the teacher's onto the
student's vocabulary (``projected_kl``), or both onto the strings the two vocabularies share
(``prefix_kl``, at the end).

ULD compares sorted probabilities, blind to which token is which; GOLD compares exactly only the
tokens whose strings both vocabularies hold, which are few when the student's vocabulary is much
smaller than the teacher's (a 1,024-token student holds a small share of a 4,096-token teacher's
strings). This term gives the student a target over its whole vocabulary at every aligned span:

At the row where both models predict the span's first token (the same characters of the same text
come next for both), the teacher's probability of each of its tokens t moves to the student token
its text begins with, ``first(t)`` (``distill.align.vocab.first_pieces``)::

    p̃(s) = Σ_{t: first(t) = s} p(t) / Σ_{t: first(t) ≠ −1} p(t)

(the probability that the student's next token is s, were the student to cut the teacher's next
token as ``first`` does), and the loss is the forward KL(p̃ || q) to the student's distribution q
on that row, scaled by T² and averaged over spans like ULD and GOLD. A teacher token whose text
the student's vocabulary holds maps to that same token. Written for this repo (the anchors' losses
across vocabularies are ULD and GOLD); the per-span reference it is tested against is in
``tests/losses/test_cross_vocab.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.divergences import TAIL_EPS


class Projection:
    """``first_piece`` as index tensors on the logits' device: the mapped teacher ids and their targets."""

    def __init__(self, first_piece, device):
        first = torch.as_tensor(first_piece, dtype=torch.long, device=device)
        self.teacher = (first >= 0).nonzero().squeeze(-1)
        self.student = first[self.teacher]


def projected_target(log_p: Tensor, projection: Projection, student_size: int) -> Tensor:
    """[c, Vs] p̃ from the teacher's [c, Vt] log-probabilities of the span's first token."""
    p = log_p.exp()[:, projection.teacher]
    target = torch.zeros(len(p), student_size, device=p.device).index_add_(1, projection.student, p)
    return target / target.sum(-1, keepdim=True).clamp_min(TAIL_EPS)


PREFIX_CUTS = ("any", "both", "observed", "within")  # loss.prefix_kl.cuts


class Prefixes:
    """Each token's prefix class (``distill.align.vocab.prefix_classes``) on the logits' device."""

    def __init__(self, mapping, device):
        self.teacher = torch.as_tensor(mapping.teacher_prefix, dtype=torch.long, device=device)
        self.student = torch.as_tensor(mapping.student_prefix, dtype=torch.long, device=device)
        self.count = mapping.prefix_count + 1  # the catch-all class too
        as_tensor = lambda a: None if a is None else torch.as_tensor(a, device=device)
        self.cuts = as_tensor(mapping.cuts)
        self.last_char, self.first_char = as_tensor(mapping.teacher_last_char), as_tensor(mapping.prefix_first_char)
        self.cuts_mode = "any"  # set by the loss (loss.prefix_kl.cuts)

    def context(self, aligned) -> Tensor:
        """[K, 2]: the character class before each span (the teacher's token at its predicting row) and that
        of the span's own first class (the text goes on with it: both tokenizers did cut before it)."""
        before = self.last_char[aligned.teacher.row_ids.to(self.last_char.device)]
        seen = self.first_char[self.teacher[aligned.teacher.first_ids.to(self.teacher.device)]]
        return torch.stack([before, seen], -1)

    def admits(self, context: Tensor) -> Tensor:
        """[c, count] bool: the prefix classes both tokenizers could cut before after that character;
        ``cuts=observed``: and those of the character class the text goes on with; ``cuts=within``: at a
        span whose next character class the table does not admit (both cut where their splits would not:
        a cut BPE made inside a piece), the classes of that character class alone."""
        admits = self.cuts[context[:, 0]][:, self.first_char]
        seen = self.first_char == context[:, 1:]
        if self.cuts_mode == "observed":
            admits |= seen
        elif self.cuts_mode == "within":
            admitted = self.cuts[context[:, 0], context[:, 1]].unsqueeze(-1)
            admits = torch.where(admitted, admits, seen)
        return admits


def class_probs(log_p: Tensor, classes: Tensor, count: int) -> Tensor:
    """[c, count] each class's probability: the sum over the tokens in it."""
    return torch.zeros(len(log_p), count, device=log_p.device).index_add_(1, classes, log_p.exp())


def prefix_per_span(lv_s, lv_t, vocab, off_s, off_t, want_grad, context=None):
    """``prefix_kl``: KL(P || Q) on the span's first rows, P and Q the two models' next-token
    distributions summed by prefix class: the class of a token is the longest string both vocabularies
    hold that its text begins with, so a class is the same event on both sides ("the next token begins
    with this string"), where one string, as a token, is not (``prefix_classes``). Both sides floored at
    TAIL_EPS like the other divergences' buckets. d/d log q_s = −P_c(s) q_s / Q_c(s)."""
    pre = vocab.prefixes
    p = class_probs(lv_t - off_t.unsqueeze(-1), pre.teacher, pre.count)
    log_q = lv_s - off_s.unsqueeze(-1)
    q = class_probs(log_q, pre.student, pre.count)
    z = None
    if context is not None:  # both restricted to the classes both tokenizers could cut before, renormalized
        admits = pre.admits(context)
        p = p * admits
        p = p / p.sum(-1, keepdim=True).clamp_min(TAIL_EPS)
        q = q * admits
        z = q.sum(-1, keepdim=True).clamp_min(TAIL_EPS)
        q = q / z
    q = q.clamp_min(TAIL_EPS)
    value = (torch.xlogy(p, p) - p * q.log()).sum(-1)
    if not want_grad:
        return value, None, None
    ratio = p / q
    if z is not None:  # d/d log q_s of −Σ p log(Q_c / Z) = q_s (1/Z − p_c / Q_c) on admitted classes
        ratio = (ratio - 1).mul_(admits) / z
    g = ratio[:, pre.student].mul_(log_q.exp()).neg_()
    return value, g, g.sum(-1).neg()


def projected_per_span(lv_s, lv_t, vocab, off_s, off_t, want_grad, context=None):
    """KL(p̃ || q) on the span's first rows: the merged vectors less their offsets (the later tokens'
    log-probabilities do not enter). d/d log q = −p̃; the offset's own gradient cancels the one the
    chunk loop gives it through lv_s (the term does not depend on the offset)."""
    target = projected_target(lv_t - off_t.unsqueeze(-1), vocab.projection, lv_s.shape[-1])
    value = (torch.xlogy(target, target) - target * (lv_s - off_s.unsqueeze(-1))).sum(-1)
    if not want_grad:
        return value, None, None
    return value, target.neg(), target.sum(-1)
