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
    by_teacher = within_classes(shared, t_text, s_text, t_prefix, s_prefix)
    by_student = within_classes(shared, s_text, t_text, s_prefix, t_prefix)
    return VocabMapping(
        t, s, VT, VS, 0, None, t_prefix, s_prefix, len(shared) + 2, within=by_teacher, within_student=by_student
    )


def class_of(text: str) -> str | None:
    shared = [c.decode() for c in toy()[0]]
    return max((c for c in shared if text.startswith(c)), key=len, default=None)


def sides(by: str):
    """(the two-row side's strings, the one-row side's): whose next row splits the class."""
    return (TEACHER, STUDENT) if by == "teacher" else (STUDENT, TEACHER)


def subclasses(c: str, by: str = "teacher") -> list[str]:
    """The subclass strings of class c: '' and every remainder of a one-row token of c that is a two-row token."""
    two, one = sides(by)
    return [""] + [x[len(c) :] for x in one if class_of(x) == c and x != c and x[len(c) :] in two]


def splits(first: str, by: str = "teacher") -> bool:
    return class_of(first) == first and len(subclasses(first, by)) > 1


def events(a1, a2, b, first: int, by: str, split: bool):
    """(two-row side's, one-row side's) distributions over events: each token's class, the class of the two-row
    token ``first`` (its text is its class c) replaced by c's subclasses when ``split``; a token of c falls in
    the longest subclass its remainder begins with, and the two-row side's c is spread by its next row a2."""
    two, one = sides(by)
    c = two[first]
    subs = subclasses(c, by) if split else [""]
    sub = lambda rest: max((k for k in subs if rest.startswith(k)), key=len)
    event = lambda text: (c, sub(text[len(c) :])) if split and class_of(text) == c else (class_of(text), "")
    A, B = {}, {}
    for x in range(len(two)):
        if split and two[x] == c:
            for u in range(len(two)):
                A[(c, sub(two[u]))] = A.get((c, sub(two[u])), 0.0) + a1[x] * a2[u]
        else:
            A[event(two[x])] = A.get(event(two[x]), 0.0) + a1[x]
    for y in range(len(one)):
        B[event(one[y])] = B.get(event(one[y]), 0.0) + b[y]
    return A, B


def kl(P, Q):
    zero = torch.zeros(())
    return sum(P[e] * (P[e].log() - Q.get(e, zero).clamp_min(TAIL_EPS).log()) for e in P if P[e] > 0)


def refined_reference(q1, q2, p1, p2, t_first: int, s_first: int, by=()):
    """The forward KL over the prefix classes with the span's class split by the sides in ``by`` (each split's
    KL less the class KL, added to it: two refinements), written out token by token."""
    P, Q = events(p1, p2, q1, t_first, "teacher", False)
    base = kl(P, Q)
    total = base
    for side in by:
        if side == "teacher":
            P, Q = events(p1, p2, q1, t_first, "teacher", True)
        else:
            Q, P = events(q1, q2, p1, s_first, "student", True)
        total = total + kl(P, Q) - base
    return total


def within_reference(q, p1, p2, first: int):
    """P(c) · KL(P || Q) inside the class c of the teacher's token ``first``, from its own definition: the
    subclass distributions of both sides (the teacher's c spread by p2), Q floored at TAIL_EPS."""
    P, Q = events(p1, p2, q, first, "teacher", True)
    c = TEACHER[first]
    P = {e: v for e, v in P.items() if e[0] == c}
    Q = {e: v for e, v in Q.items() if e[0] == c}
    p_c, q_c = sum(P.values()), sum(Q.values())
    return p_c * kl({e: v / p_c for e, v in P.items()}, {e: v / q_c for e, v in Q.items()})


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


def _batch(seed: int):
    """Two rows over the same text, cut by each side at random with 5 shared ends; random token ids (the split
    classes' own strings drawn often); each side's logits rows: one fewer than its tokens, as a model's."""
    rng = np.random.default_rng(seed)
    alignments, t_ids, s_ids = [], [], []
    for _ in range(2):
        both = rng.choice(np.arange(1, 30), 5, replace=False)
        rest = rng.permutation(np.setdiff1d(np.arange(1, 30), both))
        t_cuts, s_cuts = np.sort(np.r_[0, both, rest[:5]]), np.sort(np.r_[0, both, rest[5:8]])
        t_off, s_off = np.array([(0, 0), *zip(t_cuts, t_cuts[1:])]), np.array([(0, 0), *zip(s_cuts, s_cuts[1:])])
        t_ids.append(rng.choice([TEACHER.index("."), TEACHER.index(")")] * 4 + [*range(VT)], len(t_off)))
        s_ids.append(rng.choice([STUDENT.index("\n")] * 4 + [*range(VS)], len(s_off)))
        alignments.append(align_offsets(t_ids[-1], t_off, s_ids[-1], s_off))
    return alignments, max(map(len, t_ids)) - 1, max(map(len, s_ids)) - 1


def _logits(seed, t_len, s_len):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, s_len, VS, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    return s, torch.randn(2, t_len, VT, generator=g, dtype=torch.float64).mul(2)


def _spans(alignments, s, t, T):
    """Per span: its rows as probabilities (the student's, its next, the teacher's, its next; a last row's next:
    itself), both first tokens, and whether each side's split reads it (its class string, split, a next row)."""
    for b, a in enumerate(alignments):
        for k in range(len(a.teacher.rows)):
            t_row, s_row = int(a.teacher.rows[k]), int(a.student.rows[k])
            t_first, s_first = int(a.teacher.first_ids[k]), int(a.student.first_ids[k])
            rows = [
                (x[b, min(r, x.shape[1] - 1)] / T).softmax(-1)
                for x, r in ((s, s_row), (s, s_row + 1), (t, t_row), (t, t_row + 1))
            ]
            by_teacher = splits(TEACHER[t_first], "teacher") and t_row + 1 < t.shape[1]
            by_student = splits(STUDENT[s_first], "student") and s_row + 1 < s.shape[1]
            yield rows, t_first, s_first, by_teacher, by_student


def _last_rows(alignments, t_len, s_len):
    """How many spans each side's split leaves out for want of a next row."""
    t = sum(
        splits(TEACHER[int(f)], "teacher") and r + 1 >= t_len
        for a in alignments
        for r, f in zip(a.teacher.rows, a.teacher.first_ids)
    )
    s = sum(
        splits(STUDENT[int(f)], "student") and r + 1 >= s_len
        for a in alignments
        for r, f in zip(a.student.rows, a.student.first_ids)
    )
    return int(t), int(s)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cross_vocab_loss_adds_the_within_term_over_the_spans_it_applies_to(seed):
    """prefix_kl + w · within, where within sums the reference over the spans whose teacher token is its
    class's string (in a class that splits) and has a next row, divided by the count of all spans; same
    gradient as the sum of the two."""
    alignments, t_len, s_len = _batch(seed)
    batch, (s, t), T = collate(alignments, t_len, s_len), _logits(seed, t_len, s_len), 1.5
    m = mapping()
    loss, parts = cross_vocab_loss(s, t, batch, weights={"prefix_kl": 2.0}, mapping=m, temperature=T, prefix_within=0.7)
    alone, _ = cross_vocab_loss(s, t, batch, weights={"prefix_kl": 2.0}, mapping=m, temperature=T)
    spans = list(_spans(alignments, s, t, T))
    read = [(q, p1, p2, first) for (q, _, p1, p2), first, _, used, _ in spans if used]
    assert read
    within = sum(within_reference(*args) for args in read) / len(spans) * T**2
    torch.testing.assert_close(parts["prefix_kl.within"].double(), within.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss.double(), (alone + 2.0 * 0.7 * within).double(), rtol=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(loss, s)
    (grad_ref,) = torch.autograd.grad(alone + 2.0 * 0.7 * within, s)
    torch.testing.assert_close(grad.double(), grad_ref.double(), rtol=1e-5, atol=1e-7)


# (teacher, student) split spans left out for want of a next row: seeds 6 and 11 one of the teacher's, 11 one of the student's
LAST = {3: (0, 0), 6: (1, 0), 11: (1, 1)}


@pytest.mark.parametrize("rows", ["teacher", "both"])
@pytest.mark.parametrize("seed", sorted(LAST))
def test_prefix_kl_plus_within_is_the_kl_over_the_finer_partition(seed, rows):
    """The chain rule: at each span, the class KL + P(c) · the KL inside c is the KL over the classes with c
    split into its subclasses, written out token by token (``refined_reference``), values and gradients;
    ``rows=both``: the split by the student's next row added where its token is its class's string."""
    alignments, t_len, s_len = _batch(seed)
    batch, (s, t) = collate(alignments, t_len, s_len), _logits(seed, t_len, s_len)
    loss, _ = cross_vocab_loss(
        s, t, batch, weights={"prefix_kl": 1.0}, mapping=mapping(), prefix_within=1.0, prefix_within_rows=rows
    )
    spans = list(_spans(alignments, s, t, 1.0))
    ref = 0.0
    for (q1, q2, p1, p2), t_first, s_first, by_teacher, by_student in spans:
        by = ["teacher"] * by_teacher + ["student"] * (by_student and rows == "both")
        ref = ref + refined_reference(q1, q2, p1, p2, t_first, s_first, by)
    ref = ref / len(spans)
    assert any(by_student for *_, by_student in spans) and _last_rows(alignments, t_len, s_len) == LAST[seed]
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-8)
    (grad,), (grad_ref,) = torch.autograd.grad(loss, s), torch.autograd.grad(ref, s)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-8)


def test_the_setting_is_checked_and_needs_the_tables():
    from distill.losses.objective import Objective

    assert Objective({"prefix_kl": 1.0}).prefix_spec == {
        "cuts": "any",
        "within": 0.0,
        "within_rows": "teacher",
        "uncovered_ce": 0.0,
    }
    with pytest.raises(DistillError, match="loss.prefix_kl.within must be >= 0"):
        Objective({"prefix_kl": 1.0}, prefix_kl={"within": -1})
    with pytest.raises(DistillError, match="loss.prefix_kl.within_rows must be one of teacher, both"):
        Objective({"prefix_kl": 1.0}, prefix_kl={"within_rows": "student"})
    alignments, t_len, s_len = _batch(0)
    batch = collate(alignments, t_len, s_len)
    m = mapping()
    bare = VocabMapping(
        m.teacher_ids, m.student_ids, VT, VS, 0, None, m.teacher_prefix, m.student_prefix, m.prefix_count
    )
    s, t = torch.randn(2, s_len, VS), torch.randn(2, t_len, VT)
    with pytest.raises(DistillError, match="needs the subclass tables"):
        cross_vocab_loss(s, t, batch, weights={"prefix_kl": 1.0}, mapping=bare, prefix_within=1.0)
