"""``loss.prefix_kl.within``: the KL inside each span's prefix class, against a plain reference written from
the token strings (not from the tables), values and gradients; then inside ``cross_vocab_loss``."""

import numpy as np
import pytest
import torch

from distill.align.batch import collate
from distill.align.spans import align_offsets
from distill.align.vocab import VocabMapping
from distill.align.within import within_classes
from distill.errors import DistillError
from distill.losses.cross_vocab import TAIL_EPS, cross_vocab_loss
from distill.losses.within import Within, within_kl
from tests.align.test_within import STUDENT, TEACHER, toy

VT, VS = len(TEACHER), len(STUDENT)


def mapping() -> VocabMapping:
    shared, t_text, s_text, t_prefix, s_prefix = toy()
    pairs = [(TEACHER.index(c.decode()), STUDENT.index(c.decode())) for c in shared]
    t, s = np.array(pairs).T
    within = within_classes(shared, t_text, s_text, t_prefix, s_prefix)
    return VocabMapping(t, s, VT, VS, 0, None, t_prefix, s_prefix, len(shared) + 2, within=within)


def class_of(text: str) -> str | None:
    shared = [c.decode() for c in toy()[0]]
    return max((c for c in shared if text.startswith(c)), key=len, default=None)


def subclasses(c: str) -> tuple[list[int], list[str]]:
    """The student tokens of class c, and its subclass strings."""
    members = [s for s in range(VS) if class_of(STUDENT[s]) == c]
    return members, [""] + [
        STUDENT[s][len(c) :] for s in members if STUDENT[s] != c and STUDENT[s][len(c) :] in TEACHER
    ]


def within_reference(q, p1, p2, first: int):
    """Inside the class c of the teacher's token ``first`` (its text is c): the subclasses are '' and every
    remainder of a student token of c that is a teacher token; each remainder or next token in the longest
    of them it begins with. P: the teacher's other tokens of c by their remainders, and p1(c) spread by p2
    over what follows; Q: the student's tokens of c. P(c) · KL(P || Q), Q floored at TAIL_EPS."""
    c = TEACHER[first]
    members, subs = subclasses(c)
    sub = lambda rest: max((k for k in subs if rest.startswith(k)), key=len)
    P, Q = dict.fromkeys(subs, 0.0), dict.fromkeys(subs, 0.0)
    for t in range(VT):
        if class_of(TEACHER[t]) == c and TEACHER[t] != c:
            P[sub(TEACHER[t][len(c) :])] = P[sub(TEACHER[t][len(c) :])] + p1[t]
        P[sub(TEACHER[t])] = P[sub(TEACHER[t])] + p1[first] * p2[t]
    for s in members:
        Q[sub(STUDENT[s][len(c) :])] = Q[sub(STUDENT[s][len(c) :])] + q[s]
    p_sum, q_sum = sum(P.values()), sum(Q.values())
    kl = sum(P[k] / p_sum * ((P[k] / p_sum).log() - (Q[k] / q_sum).clamp_min(TAIL_EPS).log()) for k in subs if P[k] > 0)
    return p_sum * kl


def refined_reference(q, p1, p2, first: int):
    """The forward KL over the prefix classes with the class of ``first`` (a teacher token that is its class's
    string) split into its subclasses: each token's event written out, then KL over the events."""
    c = TEACHER[first]
    split = class_of(c) == c and len(subclasses(c)[1]) > 1
    subs = subclasses(c)[1] if split else [""]
    sub = lambda rest: max((k for k in subs if rest.startswith(k)), key=len)
    event = lambda text: (c, sub(text[len(c) :])) if split and class_of(text) == c else (class_of(text), "")
    P, Q = {}, {}
    for t in range(VT):
        if split and TEACHER[t] == c:
            for u in range(VT):
                P[(c, sub(TEACHER[u]))] = P.get((c, sub(TEACHER[u])), 0.0) + p1[t] * p2[u]
        else:
            P[event(TEACHER[t])] = P.get(event(TEACHER[t]), 0.0) + p1[t]
    for s_id in range(VS):
        Q[event(STUDENT[s_id])] = Q.get(event(STUDENT[s_id]), 0.0) + q[s_id]
    zero = torch.zeros((), dtype=q.dtype)
    return sum(P[e] * (P[e].log() - Q.get(e, zero).clamp_min(TAIL_EPS).log()) for e in P if P[e] > 0)


def test_within_kl_matches_the_reference_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    firsts = torch.tensor([TEACHER.index("."), TEACHER.index(")"), TEACHER.index(".")])
    q_logits = torch.randn(3, VS, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    p1, p2 = torch.randn(3, VT, generator=g, dtype=torch.float64), torch.randn(3, VT, generator=g, dtype=torch.float64)
    m = mapping()
    within = Within(m.within, torch.as_tensor(m.teacher_prefix), "cpu")
    assert within.spans(firsts).all() and not within.spans(torch.tensor([TEACHER.index("("), 1])).any()
    log_p1, log_p2 = p1.log_softmax(-1), p2.log_softmax(-1)
    value = within_kl(q_logits.log_softmax(-1), log_p1, log_p2, firsts, within)
    ref = torch.stack(
        [within_reference(q_logits[i].softmax(-1), log_p1[i].exp(), log_p2[i].exp(), int(firsts[i])) for i in range(3)]
    )
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(value.sum(), q_logits)
    (grad_ref,) = torch.autograd.grad(ref.sum(), q_logits)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12)
    assert (value > 0).all() and grad[:, STUDENT.index("(self")].abs().max() < 1e-12  # its class does not split


def test_the_student_matching_the_teachers_split_has_zero_loss():
    """Where the student spreads the class exactly as the teacher's two rows do, the KL is 0."""
    m = mapping()
    within = Within(m.within, torch.as_tensor(m.teacher_prefix), "cpu")
    dot = TEACHER.index(".")
    p1 = torch.zeros(VT, dtype=torch.float64)
    p1[dot] = 1.0
    p2 = torch.full((VT,), 1e-12, dtype=torch.float64)
    p2[TEACHER.index("append")], p2[TEACHER.index("x")], p2[TEACHER.index("end")] = 0.5, 0.2, 0.3
    q = torch.full((VS,), 1e-12, dtype=torch.float64)
    q[STUDENT.index(".append")], q[STUDENT.index(".x")], q[STUDENT.index(".")] = 0.5, 0.2, 0.3
    args = (p1.clamp_min(1e-12) / p1.clamp_min(1e-12).sum()).log()[None], (p2 / p2.sum()).log()[None]
    value = within_kl((q / q.sum()).log()[None], *args, torch.tensor([dot]), within)
    assert value.item() == pytest.approx(0.0, abs=1e-9)


def _batch(seed: int, length: int = 12):
    """Two rows over the same text, cut by each side at random with 5 shared ends; random token ids."""
    rng = np.random.default_rng(seed)
    alignments = []
    for _ in range(2):
        both = rng.choice(np.arange(1, 30), 5, replace=False)
        rest = rng.permutation(np.setdiff1d(np.arange(1, 30), both))
        t_cuts, s_cuts = np.sort(np.r_[0, both, rest[:5]]), np.sort(np.r_[0, both, rest[5:8]])
        t_off, s_off = np.array([(0, 0), *zip(t_cuts, t_cuts[1:])]), np.array([(0, 0), *zip(s_cuts, s_cuts[1:])])
        t_ids = rng.choice([TEACHER.index("."), TEACHER.index(")")] * 4 + [*range(VT)], len(t_off))
        s_ids = rng.integers(0, VS, len(s_off))
        alignments.append((align_offsets(t_ids, t_off, s_ids, s_off), t_ids))
    t_len, s_len = max(len(a.teacher.rows) for a, _ in alignments) + 5, length
    return [a for a, _ in alignments], [ids for _, ids in alignments], t_len, s_len


def _spans(alignments, t_len):
    """(row, span, teacher row, its first token, whether the within term reads it) of every span."""
    for b, a in enumerate(alignments):
        for k in range(len(a.teacher.rows)):
            row, first = int(a.teacher.rows[k]), int(a.teacher.first_ids[k])
            split = TEACHER[first] == class_of(TEACHER[first]) and len(subclasses(TEACHER[first])[1]) > 1
            yield b, k, row, first, split and row + 1 < t_len


def _rows3(s, t, b, a, k, row, T):
    """The student's row of span k, the teacher's row that predicts it and the next (the last one's: itself)."""
    after = min(row + 1, t.shape[1] - 1)
    return (s[b, a.student.rows[k]] / T).softmax(-1), (t[b, row] / T).softmax(-1), (t[b, after] / T).softmax(-1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cross_vocab_loss_adds_the_within_term_over_the_spans_it_applies_to(seed):
    """prefix_kl + w · within, where within sums the reference over the spans whose teacher token is its
    class's string (in a class that splits) and has a next row, divided by the count of all spans; same
    gradient as the sum of the two."""
    alignments, t_ids, t_len, s_len = _batch(seed)
    batch = collate(alignments, t_len, s_len)
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, s_len, VS, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    t = torch.randn(2, t_len, VT, generator=g, dtype=torch.float64).mul(2)
    m, T = mapping(), 1.5
    loss, parts = cross_vocab_loss(s, t, batch, weights={"prefix_kl": 2.0}, mapping=m, temperature=T, prefix_within=0.7)
    alone, _ = cross_vocab_loss(s, t, batch, weights={"prefix_kl": 2.0}, mapping=m, temperature=T)
    spans = list(_spans(alignments, t_len))
    read = [(b, k, row, first) for b, k, row, first, used in spans if used]
    last = sum(1 for b, k, row, first, _ in spans if row + 1 >= t_len and TEACHER[first] in (".", ")"))
    assert read and last == (seed == 2)  # seed 2: a split span at the last row (its next row: none), left out
    total = sum(within_reference(*_rows3(s, t, b, alignments[b], k, row, T), first) for b, k, row, first in read)
    within = total / len(spans) * T**2
    torch.testing.assert_close(parts["prefix_kl.within"].double(), within.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss.double(), (alone + 2.0 * 0.7 * within).double(), rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(loss, s)
    (grad_ref,) = torch.autograd.grad(alone + 2.0 * 0.7 * within, s)
    torch.testing.assert_close(grad.double(), grad_ref.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 2])
def test_prefix_kl_plus_within_is_the_kl_over_the_finer_partition(seed):
    """The chain rule: at each span, the class KL + P(c) · the KL inside c is the KL over the classes with c
    split into its subclasses, written out token by token (``refined_reference``), values and gradients."""
    alignments, _, t_len, s_len = _batch(seed)
    batch = collate(alignments, t_len, s_len)
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, s_len, VS, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    t = torch.randn(2, t_len, VT, generator=g, dtype=torch.float64).mul(2)
    loss, _ = cross_vocab_loss(s, t, batch, weights={"prefix_kl": 1.0}, mapping=mapping(), prefix_within=1.0)
    spans = list(_spans(alignments, t_len))
    ref = 0.0
    for b, k, row, first, used in spans:
        q, p1, p2 = _rows3(s, t, b, alignments[b], k, row, 1.0)
        ref = ref + refined_reference(q, p1, p2, first if used else TEACHER.index("a"))  # 'a': a class not split
    ref = ref / len(spans)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-8)
    (grad,), (grad_ref,) = torch.autograd.grad(loss, s), torch.autograd.grad(ref, s)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-8)


def test_the_setting_is_checked_and_needs_the_tables():
    from distill.losses.objective import Objective

    assert Objective({"prefix_kl": 1.0}).prefix_spec == {"cuts": "any", "within": 0.0}
    with pytest.raises(DistillError, match="loss.prefix_kl.within must be >= 0"):
        Objective({"prefix_kl": 1.0}, prefix_kl={"within": -1})
    alignments, _, t_len, s_len = _batch(0)
    batch = collate(alignments, t_len, s_len)
    m = mapping()
    bare = VocabMapping(
        m.teacher_ids, m.student_ids, VT, VS, 0, None, m.teacher_prefix, m.student_prefix, m.prefix_count
    )
    s, t = torch.randn(2, s_len, VS), torch.randn(2, t_len, VT)
    with pytest.raises(DistillError, match="needs the subclass tables"):
        cross_vocab_loss(s, t, batch, weights={"prefix_kl": 1.0}, mapping=bare, prefix_within=1.0)
