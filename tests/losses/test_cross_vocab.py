"""ULD, GOLD and the projected KL on aligned spans: the chunked kernels against plain references written from the papers."""

import numpy as np
import pytest
import torch

from distill.align.batch import collate
from distill.align.spans import align_offsets
from distill.align.vocab import VocabMapping
from distill.errors import DistillError
from distill.losses.cross_vocab import TAIL_EPS, cross_vocab_loss
from distill.teacher.outputs import SparseTeacher

B, LT, LS, VT, VS = 2, 14, 11, 17, 13
# the shared tokens map to their own; others to a student token their text would begin with; 3 and 16: to none
FIRST = np.array([1, 5, 3, -1, 6, 4, 6, 9, 12, 2, 5, 0, 12, 8, 2, 7, -1])
# prefix classes (0-5; 6 the catch-all): the longest shared string each token begins with, here at random
T_PREFIX = np.array([0, 3, 1, 6, 2, 2, 5, 3, 4, 0, 1, 4, 5, 6, 0, 3, 1])
S_PREFIX = np.array([4, 0, 1, 3, 2, 5, 1, 0, 3, 2, 6, 4, 5])
# prefix_kl.both_cut: the class of each teacher token's last character, of each prefix class's first (7:
# none), and where both tokenizers cut between two character classes
T_LAST = np.array([0, 1, 2, 3, 5, 0, 0, 1, 4, 5, 2, 0, 3, 1, 5, 0, 6])
CLASS_FIRST = np.array([0, 2, 5, 1, 3, 0, 6])
CUTS = np.random.default_rng(0).random((7, 7)) < 0.6
CUTS[6, :] = CUTS[:, 6] = True
MAPPING = VocabMapping(
    np.array([0, 2, 5, 7, 11]),
    np.array([1, 3, 4, 9, 0]),
    VT,
    VS,
    0,
    FIRST,
    T_PREFIX,
    S_PREFIX,
    6,
    CUTS,
    T_LAST,
    CLASS_FIRST,
)


def _offsets(cuts):
    """A leading zero-width context token, then tokens between consecutive cuts."""
    return np.array([(0, 0), *zip(cuts, cuts[1:])])


def ragged_rows(seed, lengths, characters: int, shared: int):
    """Rows (one per (teacher, student) length) with ragged alignments over ``characters`` characters:
    ``shared`` ends on both sides, the rest on one side only, so spans have 1-4 tokens on either side;
    and a tail with no shared end (unaligned)."""
    rng = np.random.default_rng(seed)
    alignments = []
    for t_len, s_len in lengths:
        pool = rng.permutation(np.arange(1, characters))
        both, rest = pool[:shared], pool[shared:]
        t_own, s_own = t_len - shared - 1, s_len - shared - 1  # cuts of one side only (the context token aside)
        t_cuts = np.sort(np.concatenate([both, rest[:t_own]]))
        s_cuts = np.sort(np.concatenate([both, rest[t_own : t_own + s_own]]))
        t_off, s_off = _offsets([0, *t_cuts]), _offsets([0, *s_cuts])
        t_ids, s_ids = rng.integers(0, VT, len(t_off)), rng.integers(0, VS, len(s_off))
        alignments.append((align_offsets(t_ids, t_off, s_ids, s_off), t_ids, s_ids))
    return alignments


def _rows(seed):
    """Two rows of a few shared ends each."""
    return ragged_rows(seed, ((LT, LS), (LT - 3, LS - 2)), characters=40, shared=4)


def _logits(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, LS, VS, generator=g) * 2).to(dtype), (torch.randn(B, LT, VT, generator=g) * 2).to(dtype)


def _groups(side, k, ids):
    """Span k's tokens on one side: [(row predicting it, token id), ...], first token first."""
    later = np.flatnonzero(side.extra_span == k)
    return [(int(side.rows[k]), int(ids[side.rows[k] + 1]))] + [
        (int(side.extra_rows[j]), int(side.extra_ids[j])) for j in later
    ]


# ---------------------------------------------------------------- the references, written plainly


def merged_probs(logits, group, T):
    """GOLD's merge: the first token's distribution times the probabilities of the span's later tokens."""
    probs = torch.softmax(logits[group[0][0]] / T, -1)
    for row, token in group[1:]:
        probs = probs * torch.softmax(logits[row] / T, -1)[token]
    return probs


def uld_reference(p, q):
    """Boizard et al. 2024: sort both probability vectors, pad the shorter with zeros, L1 distance."""
    p, q = torch.sort(p, descending=True).values, torch.sort(q, descending=True).values
    size = max(len(p), len(q))
    p, q = torch.nn.functional.pad(p, (0, size - len(p))), torch.nn.functional.pad(q, (0, size - len(q)))
    return (p - q).abs().sum()


def gold_reference(p, q, mapping, matched_weight):
    """Exact KL on the shared tokens + one bucket for all other mass; ULD on the unshared tokens."""
    t_ids, s_ids = torch.as_tensor(mapping.teacher_ids), torch.as_tensor(mapping.student_ids)
    p_bucket = torch.cat([p[t_ids], (1 - p[t_ids].sum()).clamp_min(TAIL_EPS).reshape(1)])
    q_bucket = torch.cat([q[s_ids], (1 - q[s_ids].sum()).clamp_min(TAIL_EPS).reshape(1)])
    p_bucket, q_bucket = p_bucket / p_bucket.sum(), q_bucket / q_bucket.sum()
    kl = (p_bucket * (p_bucket.log() - q_bucket.log())).sum()
    t_rest = [i for i in range(len(p)) if i not in set(mapping.teacher_ids.tolist())]
    s_rest = [i for i in range(len(q)) if i not in set(mapping.student_ids.tolist())]
    w = len(t_ids) / len(p) if matched_weight is None else matched_weight
    return w * kl + (1 - w) * uld_reference(p[t_rest], q[s_rest])


def projected_reference(p_first, q_first, first):
    """Each teacher token's probability moved to the student token its text begins with (renormalized
    over the tokens that have one), then forward KL to the student's first-token distribution."""
    target = torch.zeros_like(q_first)
    for t_id, s_id in enumerate(first.tolist()):
        if s_id >= 0:
            target[s_id] = target[s_id] + p_first[t_id]
    target = target / target.sum()
    return sum(x * (x.log() - q) for x, q in zip(target, q_first.log()) if x > 0)


def prefix_reference(p_first, q_first, t_classes, s_classes, count, admits=None):
    """Both first-token distributions summed by class (with ``admits``: only those classes, each side
    renormalized over them), then KL (the student's classes floored at TAIL_EPS)."""
    p, q = torch.zeros(count + 1, dtype=p_first.dtype), torch.zeros(count + 1, dtype=q_first.dtype)
    for token, c in enumerate(t_classes.tolist()):
        p = p + torch.nn.functional.one_hot(torch.tensor(c), count + 1) * p_first[token]
    for token, c in enumerate(s_classes.tolist()):
        q = q + torch.nn.functional.one_hot(torch.tensor(c), count + 1) * q_first[token]
    if admits is not None:
        p, q = p * admits, q * admits
        p, q = p / p.sum(), q / q.sum()
    return sum(x * (x.log() - y.clamp_min(TAIL_EPS).log()) for x, y in zip(p, q) if x > 0)


def reference(term, s, t, rows, weights, T, matched_weight=None):
    """Mean over spans (by weight) of the term between the merged distributions, × T²."""
    total, k_all = 0.0, 0
    for b, (a, t_ids, s_ids) in enumerate(rows):
        for k in range(len(a)):
            s_group, t_group = _groups(a.student, k, s_ids), _groups(a.teacher, k, t_ids)
            q, p = merged_probs(s[b], s_group, T), merged_probs(t[b], t_group, T)
            if term == "uld":
                value = uld_reference(p, q)
            elif term == "gold":
                value = gold_reference(p, q, MAPPING, matched_weight)
            elif term == "alm":  # the binary KL of the two models' probability of the span's text
                pt, ps = p[t_group[0][1]], q[s_group[0][1]]
                value = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
            elif term == "prefix_kl":  # the span's first rows only
                value = prefix_reference(
                    merged_probs(t[b], t_group[:1], T), merged_probs(s[b], s_group[:1], T), T_PREFIX, S_PREFIX, 6
                )
            else:  # the span's first rows only
                value = projected_reference(
                    merged_probs(t[b], t_group[:1], T), merged_probs(s[b], s_group[:1], T), FIRST
                )
            total = total + weights[k_all] * value
            k_all += 1
    return total / weights.sum() * T**2


# ---------------------------------------------------------------- the tests


def _kernel(s, t, rows, weights, mask=None, **kw):
    batch = collate([a for a, _, _ in rows], LT, LS, student_mask=mask)
    return cross_vocab_loss(s, t, batch, weights=weights, mapping=MAPPING, **kw), batch


def _value_and_grad(fn, s):
    s = s.detach().requires_grad_(True)
    out = fn(s)
    value = out[0][0] if isinstance(out, tuple) else out
    (g,) = torch.autograd.grad(value, s)
    return out, g


@pytest.mark.parametrize("chunk_size", [1, 3, 256])
@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("term", ["uld", "gold", "projected_kl", "prefix_kl", "alm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_reference_value_and_grad(term, T, chunk_size, seed):
    rows = _rows(seed)
    s, t = _logits(seed)
    assert any(len(a.student.extra_rows) and len(a.teacher.extra_rows) for a, _, _ in rows)  # ragged spans
    (((loss, parts), batch), g) = _value_and_grad(
        lambda x: _kernel(x.float(), t.float(), rows, {term: 1.0}, temperature=T, chunk_size=chunk_size), s
    )
    ref, g_ref = _value_and_grad(lambda x: reference(term, x, t, rows, torch.ones(len(batch)), T), s)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(parts[term], loss)
    extra_only = sorted(set(batch.student.extra_rows.tolist()) - set(batch.student.rows.tolist()))
    learn = g.reshape(-1, VS)[extra_only].abs().sum(-1)
    if term in ("projected_kl", "prefix_kl"):  # the span's later tokens do not enter the projections
        assert learn.max() < 1e-6
    else:
        assert extra_only and (learn > 0).all()  # merged rows learn too


def test_masked_spans_count_nothing_and_get_no_gradient():
    rows, (s, t) = _rows(2), _logits(2)
    mask = torch.ones(B, LS, dtype=torch.bool)
    mask[0, :4] = False  # e.g. a prompt: its rows predict nothing that is distilled
    (((loss, _), batch), g) = _value_and_grad(lambda x: _kernel(x.float(), t.float(), rows, {"uld": 1.0}, mask), s)
    assert 0 < batch.weight.sum() < len(batch)
    ref, g_ref = _value_and_grad(lambda x: reference("uld", x, t, rows, batch.weight.double(), 1.0), s)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)
    masked_rows = batch.student.rows[batch.weight == 0]
    assert g.reshape(-1, VS)[masked_rows].abs().sum() == 0


def test_both_terms_together_and_gold_fixed_weight():
    rows, (s, t) = _rows(3), _logits(3)
    weights = {"uld": 0.3, "gold": 2.0}
    (((loss, parts), batch), g) = _value_and_grad(
        lambda x: _kernel(x.float(), t.float(), rows, weights, matched_weight=0.8, chunk_size=4), s
    )
    n = torch.ones(len(batch))
    ref, g_ref = _value_and_grad(
        lambda x: 0.3 * reference("uld", x, t, rows, n, 1.0) + 2.0 * reference("gold", x, t, rows, n, 1.0, 0.8), s
    )
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)
    assert set(parts) == {"uld", "gold"}


def test_gold_on_one_to_one_spans_is_the_reference_over_those_spans_alone():
    """``loss.gold.spans=one_to_one``: GOLD averaged over the spans of one token a side (value and
    gradient as the reference weighted by that mask); ULD beside it keeps every span."""
    rows, (s, t) = _rows(5), _logits(5)
    weights = {"uld": 0.5, "gold": 1.0}
    (((loss, parts), batch), g) = _value_and_grad(
        lambda x: _kernel(x.float(), t.float(), rows, weights, gold_spans="one_to_one", chunk_size=4), s
    )
    ones, single = torch.ones(len(batch)), batch.one_to_one.double()
    assert 0 < single.sum() < len(batch)  # both kinds of span are present
    ref, g_ref = _value_and_grad(
        lambda x: 0.5 * reference("uld", x, t, rows, ones, 1.0) + reference("gold", x, t, rows, single, 1.0), s
    )
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)
    every, _ = _kernel(s.float(), t.float(), rows, {"gold": 1.0})[0]
    assert abs(parts["gold"].item() - every.item()) > 1e-4  # the longer spans did count by default


@pytest.mark.parametrize("cuts", ["both", "observed", "within"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_kl_on_the_classes_both_tokenizers_cut_before(seed, cuts):
    """``prefix_kl.cuts``: after the character before a span (the class of the teacher's token at its
    predicting row), only the classes both splits could cut before, both sides renormalized over them;
    ``both``: a span whose own next class is not one of them is left out; ``observed``: the classes of its
    character class are admitted too; ``within``: at such a span, those classes alone."""
    rows, (s, t) = _rows(seed), _logits(seed)
    (((loss, _), batch), g) = _value_and_grad(
        lambda x: _kernel(x.float(), t.float(), rows, {"prefix_kl": 1.0}, temperature=1.5, prefix_cuts=cuts), s
    )

    def ref(x):
        total, weight = 0.0, 0.0
        for b, (a, t_ids, s_ids) in enumerate(rows):
            for k in range(len(a)):
                t_group, s_group = _groups(a.teacher, k, t_ids), _groups(a.student, k, s_ids)
                before, seen = T_LAST[t_ids[t_group[0][0]]], CLASS_FIRST[T_PREFIX[t_group[0][1]]]
                w = float(CUTS[before, seen]) if cuts == "both" else 1.0
                admitted = CUTS[before][CLASS_FIRST] | ((CLASS_FIRST == seen) if cuts == "observed" else False)
                if cuts == "within" and not CUTS[before, seen]:
                    admitted = CLASS_FIRST == seen
                admits = torch.as_tensor(admitted, dtype=torch.float64)
                p, q = merged_probs(t[b], t_group[:1], 1.5), merged_probs(x[b], s_group[:1], 1.5)
                total = total + w * prefix_reference(p, q, T_PREFIX, S_PREFIX, 6, admits)
                weight += w
        return total / weight * 1.5**2

    value, g_ref = _value_and_grad(ref, s)
    assert 0 < float(batch.weight.sum()) and value.item() > 0
    torch.testing.assert_close(loss.double(), value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-6, atol=1e-6)
    every, _ = _kernel(s.float(), t.float(), rows, {"prefix_kl": 1.0}, temperature=1.5)[0]
    assert abs(every.item() - loss.item()) > 1e-4  # the restriction changes the term


@pytest.mark.parametrize("cuts", ["any", "both"])
def test_uncovered_ce_reads_the_rows_of_the_spans_prefix_kl_leaves_out(cuts):
    """``prefix_uncovered_ce``: CE on the student's rows that are no compared span's first row, over all
    labelled rows (``distill.losses.uncovered``); ``cuts=both`` leaves spans out, and their first rows with them."""
    from distill.losses.uncovered import uncovered_ce

    rows, (s, t) = _rows(3), _logits(3, torch.float32)
    labels = torch.randint(0, VS, (B, LS), generator=torch.Generator().manual_seed(3))
    (loss, parts), batch = _kernel(
        s, t, rows, {"prefix_kl": 1.0}, prefix_cuts=cuts, prefix_uncovered_ce=0.7, labels=labels
    )
    compared = []
    for b, (a, t_ids, _) in enumerate(rows):
        for k in range(len(a)):
            before, seen = T_LAST[t_ids[int(a.teacher.rows[k])]], CLASS_FIRST[T_PREFIX[t_ids[a.teacher.rows[k] + 1]]]
            if cuts == "any" or CUTS[before, seen]:
                compared.append(b * LS + int(a.student.rows[k]))
    assert 0 < len(compared) < len(batch) if cuts == "both" else len(compared) == len(batch)
    expected = uncovered_ce(s, labels, torch.tensor(compared))
    torch.testing.assert_close(parts["prefix_kl.uncovered_ce"], expected)
    alone, _ = _kernel(s, t, rows, {"prefix_kl": 1.0}, prefix_cuts=cuts)[0]
    torch.testing.assert_close(loss, alone + 0.7 * expected)
    with pytest.raises(DistillError, match="loss.prefix_kl.uncovered_ce needs the student's labels"):
        _kernel(s, t, rows, {"prefix_kl": 1.0}, prefix_uncovered_ce=0.7)


def _same_model_batch():
    """One vocabulary and one tokenization on both sides: every span is one token each."""
    off = _offsets(list(range(0, 11)))
    ids = np.arange(len(off)) % VS
    identity = VocabMapping(np.arange(VS), np.arange(VS), VS, VS, 0, np.arange(VS), np.arange(VS), np.arange(VS), VS)
    return collate([align_offsets(ids, off, ids, off)], len(off), len(off)), identity, len(off)


@pytest.mark.parametrize("term", ["uld", "gold", "projected_kl", "prefix_kl", "alm"])
def test_identical_models_have_zero_loss(term):
    batch, identity, n = _same_model_batch()
    z = torch.randn(1, n, VS, requires_grad=True)
    loss, _ = cross_vocab_loss(z, z.detach(), batch, weights={term: 1.0}, mapping=identity, temperature=2.0)
    loss.backward()
    assert len(batch) == n - 1 and abs(loss.item()) < 1e-6 and z.grad.abs().max() < 1e-6
    other, _ = cross_vocab_loss(z, z.detach() * 3, batch, weights={term: 1.0}, mapping=identity)
    assert other.item() > (1e-3 if term == "alm" else 0.1)  # alm compares one probability per span


def test_uld_ignores_how_a_vocabulary_is_ordered_and_gold_does_not():
    batch, identity, n = _same_model_batch()
    s, t = torch.randn(1, n, VS), torch.randn(1, n, VS)
    perm = torch.randperm(VS, generator=torch.Generator().manual_seed(0))
    uld = lambda x: cross_vocab_loss(x, t, batch, weights={"uld": 1.0})[0]
    gold = lambda x: cross_vocab_loss(x, t, batch, weights={"gold": 1.0}, mapping=identity)[0]
    torch.testing.assert_close(uld(s), uld(s[..., perm]))
    assert abs(gold(s).item() - gold(s[..., perm]).item()) > 1e-3


def test_bf16_logits_give_float32_loss_and_bf16_grad():
    rows, (s, t) = _rows(4), _logits(4, torch.float32)
    x = s.bfloat16().requires_grad_(True)
    (loss, _), _ = _kernel(x, t, rows, {"gold": 1.0})
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    ref = reference(
        "gold", s.bfloat16().double(), t.double(), rows, torch.ones(len(_kernel(s, t, rows, {"uld": 1})[1])), 1
    )
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)


def _cached(t, k):
    lp, idx = torch.log_softmax(t.float(), -1).topk(k, dim=-1)
    return SparseTeacher(lp, idx)


def _dense_from_cache(cache, width):
    """The cache's completion, written plainly: the k log-probs kept, the rest of the mass even."""
    p = torch.zeros(*cache.shape[:-1], width, dtype=torch.float64)
    p.scatter_(-1, cache.indices, cache.logprobs.double().exp())
    k = cache.shape[-1]
    if k < width:
        tail = (1 - p.sum(-1, keepdim=True)).clamp_min(TAIL_EPS)
        p = torch.where(p > 0, p, tail / (width - k))
    return p.log()


@pytest.mark.parametrize("k", [VT, 5])
@pytest.mark.parametrize("term", ["uld", "gold", "prefix_kl", "alm"])
def test_a_cached_top_k_teacher_equals_its_dense_completion(term, k):
    rows, (s, t) = _rows(6), _logits(6, torch.float32)
    cache = _cached(t, k)
    (((loss, _), batch), g) = _value_and_grad(
        lambda x: _kernel(x, cache, rows, {term: 1.0}, temperature=2.0, teacher_vocab_size=VT), s.float()
    )
    dense = _dense_from_cache(cache, VT)
    ref, g_ref = _value_and_grad(lambda x: reference(term, x, dense, rows, torch.ones(len(batch)), 2.0), s)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref.double(), rtol=1e-5, atol=1e-6)
    if k == VT:  # the whole distribution cached: the same loss as the live teacher's logits
        live, _ = _kernel(s.float(), t, rows, {term: 1.0}, temperature=2.0)
        torch.testing.assert_close(loss, live[0], rtol=1e-5, atol=1e-6)


def test_no_spans_give_zero_and_a_mismatched_mapping_is_refused():
    rows, (s, t) = _rows(5), _logits(5, torch.float32)
    s = s.requires_grad_(True)
    mask = torch.zeros(B, LS, dtype=torch.bool)
    (loss, parts), _ = _kernel(s, t, rows, {"uld": 1.0, "gold": 1.0}, mask)
    loss.backward()
    assert loss.item() == 0 and s.grad.abs().sum() == 0 and set(parts) == {"uld", "gold"}
    batch = collate([a for a, _, _ in rows], LT, LS)
    with pytest.raises(DistillError, match="trim LM-head padding rows"):
        cross_vocab_loss(torch.randn(B, LS, VS + 3), t, batch, weights={"gold": 1.0}, mapping=MAPPING)
    with pytest.raises(DistillError, match="needs the vocabulary mapping"):
        cross_vocab_loss(s, t, batch, weights={"gold": 1.0})
    with pytest.raises(DistillError, match="needs its vocabulary size"):
        cross_vocab_loss(s, _cached(t, 4), batch, weights={"uld": 1.0})


@pytest.mark.slow  # seconds of CPU, minutes on a shared machine; the kernels' values are checked above
@pytest.mark.parametrize("term", ["uld", "gold"])
def test_a_student_with_its_own_tokenizer_learns_from_the_teacher_through_real_alignments(term):
    """End to end on real tokenizers and tiny Llamas: texts aligned, collated, the loss minimised."""
    from distill.align.encode import TextAligner
    from distill.align.vocab import vocab_mapping
    from distill.student.scratch import build_llama
    from tests.align.helpers import FAMILIES, HARD_TEXTS

    t_tok, s_tok = FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()
    aligner, mapping = TextAligner(t_tok, s_tok), vocab_mapping(t_tok, s_tok)
    rows = [aligner.align([text]) for text in HARD_TEXTS[:2]]
    t_len, s_len = max(len(t.ids) for t, _, _ in rows), max(len(s.ids) for _, s, _ in rows)
    pad = lambda enc, n, fill: torch.tensor([[*e.ids.tolist(), *[fill] * (n - len(e.ids))] for e in enc])
    t_ids = pad([t for t, _, _ in rows], t_len, t_tok.eos_token_id)
    s_ids = pad([s for _, s, _ in rows], s_len, s_tok.eos_token_id)
    batch = collate([a for _, _, a in rows], t_len, s_len)
    torch.manual_seed(0)
    teacher = build_llama(len(t_tok), hidden_size=32, num_layers=2, num_heads=2, max_seq_len=128).eval()
    student = build_llama(len(s_tok), hidden_size=32, num_layers=2, num_heads=2, max_seq_len=128)
    with torch.no_grad():
        t_logits = teacher(input_ids=t_ids).logits * 20  # a peaked teacher: something to learn
    opt = torch.optim.Adam(student.parameters(), lr=3e-2)
    losses = []
    for _ in range(12):
        loss, _ = cross_vocab_loss(
            student(input_ids=s_ids).logits, t_logits, batch, weights={term: 1.0}, mapping=mapping
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.8 * losses[0], losses  # measured: ULD 0.90 -> 0.44, GOLD 0.55 -> 0.37


def test_several_teachers_each_on_its_own_rows_sum_to_the_weighted_terms():
    """``teachers_mix=sum`` (``Objective._per_teacher_terms``): a teacher on the student's tokens gets the
    exact divergence, one on rows of another tokenizer GOLD on its own alignment and vocabulary mapping."""
    from distill.losses.divergences import chunked_logit_loss
    from distill.losses.objective import Objective, Outputs

    rows, (s, t) = _rows(4), _logits(4, torch.float32)
    batch = collate([a for a, *_ in rows], LT, LS)
    same = torch.randn(B, LS, VS, generator=torch.Generator().manual_seed(5))
    labels = torch.randint(0, VS, (B, LS), generator=torch.Generator().manual_seed(6))
    obj = Objective(weights={"ce": 0.5, "forward_kl": 1.0, "gold": 2.0})
    obj.member_mappings = [None, MAPPING]
    members = (Outputs(logits=same, vocab_size=VS), Outputs(logits=t, vocab_size=VT, aligned=batch))
    terms = obj(Outputs(logits=s, vocab_size=VS), Outputs(members=members, member_weights=(0.7, 0.3)), labels)
    kl, _ = chunked_logit_loss(s, same, labels, None, weights={"forward_kl": 1.0})
    ce, _ = chunked_logit_loss(s, None, labels, None, weights={"ce": 1.0})
    gold, _ = cross_vocab_loss(s, t, batch, weights={"gold": 1.0}, mapping=MAPPING)
    torch.testing.assert_close(terms["loss"], 0.5 * ce + 0.7 * kl + 0.3 * 2.0 * gold)
    torch.testing.assert_close(terms["gold.teacher1"], gold)
    torch.testing.assert_close(terms["forward_kl.teacher0"], kl)
    assert "gold.teacher0" not in terms and "forward_kl.teacher1" not in terms


def test_prefix_kl_setting_is_checked():
    from distill.losses.objective import Objective

    assert Objective({"prefix_kl": 1.0}).prefix_spec == {
        "cuts": "any",
        "within": 0.0,
        "within_rows": "teacher",
        "uncovered_ce": 0.0,
    }
    with pytest.raises(DistillError, match="loss.prefix_kl.cuts must be one of any, both, observed, within"):
        Objective({"prefix_kl": 1.0}, prefix_kl={"cuts": "yes"})
    with pytest.raises(DistillError, match="loss.prefix_kl has no setting 'both_cut'"):
        Objective({"prefix_kl": 1.0}, prefix_kl={"both_cut": True})
