import math

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses import divergences as D
from distill.losses.divergences import DIVERGENCES, IGNORE_INDEX, chunked_logit_loss, logit_chunk
from distill.teacher.outputs import SparseTeacher

V, K = 97, 8
KINDS = ("dense", "bucket", "renormalize")


def _inputs(seed=0, b=2, t=7, v=V):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, t, v, generator=g) * 2
    te = torch.randn(b, t, v, generator=g) * 3
    y = torch.randint(0, v, (b, t), generator=g)
    y[0, :3] = IGNORE_INDEX
    mask = y != IGNORE_INDEX
    mask[1, 2] = False  # distilled tokens differ from CE tokens
    mask[0, 1] = True
    return s, te, y, mask


def _sparse(teacher_logits, k=K):
    lp, idx = F.log_softmax(teacher_logits.float(), -1).topk(k, dim=-1)
    return SparseTeacher(lp, idx)


def _teacher(kind, te, k=K):
    return te if kind == "dense" else _sparse(te, k)


def _tail(kind):
    return "bucket" if kind == "dense" else kind


def _reference(term, s, teacher, y, mask, T, beta, tail):
    if term == "ce":
        return D.cross_entropy(s, y)
    if term == "jsd":
        return D.jsd(s, teacher, beta, T, mask, tail=tail)
    return getattr(D, term)(s, teacher, T, mask, tail=tail)


def _value_and_grad(fn, s):
    s = s.detach().requires_grad_(True)
    out = fn(s)
    loss = out[0] if isinstance(out, tuple) else out
    (g,) = torch.autograd.grad(loss, s)
    return out, g


def _close(a, b, rel):
    """|a − b| small relative to the scale of b (for bf16, where elementwise rtol is meaningless)."""
    a, b = a.float(), b.float()
    assert (a - b).abs().max().item() <= rel * max(b.abs().max().item(), 1e-6), ((a - b).abs().max(), b.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("term, kind", [(t, k) for t in DIVERGENCES for k in KINDS] + [("ce", "dense")])
def test_chunked_matches_reference_value_and_grad(term, kind, T, dtype):
    s, te, y, mask = _inputs()
    s = s.to(dtype)
    teacher, tail, beta = _teacher(kind, te), _tail(kind), 0.3
    kw = dict(weights={term: 1.0}, temperature=T, beta=beta, tail=tail, chunk_size=5)
    (loss, parts), g = _value_and_grad(lambda x: chunked_logit_loss(x, teacher, y, mask, **kw), s)
    ref, g_ref = _value_and_grad(lambda x: _reference(term, x, teacher, y, mask, T, beta, tail), s)
    assert loss.dtype == torch.float32 and g.dtype == dtype and set(parts) == {term}
    torch.testing.assert_close(parts[term], loss)
    if dtype == torch.float32:
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)  # both read the same bf16 logits in float32
        _close(g, g_ref, 1e-2)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_jsd_limits_are_the_kls(kind, T):
    s, te, y, mask = _inputs(1)
    teacher, tail = _teacher(kind, te), _tail(kind)

    def run(term, beta=0.5):
        return _value_and_grad(
            lambda x: chunked_logit_loss(
                x, teacher, y, mask, weights={term: 1.0}, temperature=T, beta=beta, tail=tail, chunk_size=4
            )[0],
            s,
        )

    for beta, term in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        (j, gj), (d, gd) = run("jsd", beta), run(term)
        if kind == "renormalize" and term == "forward_kl":
            # JSD renormalizes the student over the k tokens; forward KL keeps DistillKit's full-vocabulary student
            lp, idx = teacher.logprobs, teacher.indices
            per_token = F.kl_div(
                F.log_softmax(s.gather(-1, idx) / T, -1), F.log_softmax(lp / T, -1), reduction="none", log_target=True
            ).sum(-1)
            d = per_token[mask].mean() * T**2
            torch.testing.assert_close(j, d)
            continue
        torch.testing.assert_close(j, d)
        torch.testing.assert_close(gj, gd)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("term", DIVERGENCES)
def test_sparse_with_all_tokens_in_bucket_mode_equals_dense(term, T):
    s, te, y, mask = _inputs(2, v=23)
    kw = dict(weights={term: 1.0}, temperature=T, chunk_size=3)
    (dense, _), g_dense = _value_and_grad(lambda x: chunked_logit_loss(x, te, y, mask, **kw), s)
    (sparse, _), g_sparse = _value_and_grad(lambda x: chunked_logit_loss(x, _sparse(te, 23), y, mask, **kw), s)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_combined_weights_are_the_weighted_sum_of_single_terms(kind):
    s, te, y, mask = _inputs(3)
    teacher, tail = _teacher(kind, te), _tail(kind)
    weights = {"forward_kl": 0.7, "reverse_kl": 0.2, "jsd": 0.5, "tvd": 1.3, "ce": 0.4}
    kw = dict(temperature=1.5, beta=0.4, tail=tail, chunk_size=6)
    (loss, parts), g = _value_and_grad(lambda x: chunked_logit_loss(x, teacher, y, mask, weights=weights, **kw), s)
    expected, g_expected = 0.0, 0.0
    for term, w in weights.items():
        (single, _), g_single = _value_and_grad(
            lambda x: chunked_logit_loss(x, teacher, y, mask, weights={term: 1.0}, **kw), s
        )
        torch.testing.assert_close(parts[term], single)
        expected, g_expected = expected + w * single, g_expected + w * g_single
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(g, g_expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("term", DIVERGENCES)
def test_identical_student_and_teacher_give_zero(term, kind, T):
    s, _, y, mask = _inputs(5)
    teacher = _teacher(kind, s)
    loss, _ = chunked_logit_loss(s, teacher, y, mask, weights={term: 1.0}, temperature=T, tail=_tail(kind))
    if term == "forward_kl" and kind == "renormalize":  # DistillKit's form: minimum −T²·log Σ_k p_T
        top_mass = F.softmax(s / T, -1).gather(-1, teacher.indices).sum(-1)
        expected = -top_mass.log()[mask].mean() * T**2
        torch.testing.assert_close(loss, expected)
    else:
        assert abs(loss.item()) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_divergences_are_positive_for_different_models(kind):
    s, te, y, mask = _inputs(6)
    for term in DIVERGENCES:
        loss, _ = chunked_logit_loss(s, _teacher(kind, te), y, mask, weights={term: 1.0}, tail=_tail(kind))
        assert loss.item() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_no_distilled_tokens_gives_zero_without_nan(kind):
    s, te, y, mask = _inputs(7)
    weights = {term: 1.0 for term in DIVERGENCES}
    (loss, parts), g = _value_and_grad(
        lambda x: chunked_logit_loss(
            x, _teacher(kind, te), y, torch.zeros_like(mask), weights=weights, tail=_tail(kind)
        ),
        s,
    )
    assert loss.item() == 0 and all(p.item() == 0 for p in parts.values())
    assert torch.equal(g, torch.zeros_like(g))
    y_none = torch.full_like(y, IGNORE_INDEX)
    (loss, parts), g = _value_and_grad(lambda x: chunked_logit_loss(x, None, y_none, weights={"ce": 1.0}), s)
    assert loss.item() == 0 and torch.equal(g, torch.zeros_like(g))


def test_bad_indices_in_rows_not_distilled_are_ignored():
    s, te, y, mask = _inputs(8)
    teacher = _sparse(te)
    broken = SparseTeacher(teacher.logprobs.clone(), teacher.indices.clone())
    broken.logprobs[~mask] = float("nan")
    broken.indices[~mask] = -1
    for tail in ("bucket", "renormalize"):
        kw = dict(weights={"jsd": 1.0, "forward_kl": 1.0, "ce": 0.5}, tail=tail, chunk_size=5)
        (a, _), ga = _value_and_grad(lambda x: chunked_logit_loss(x, teacher, y, mask, **kw), s)
        (b, _), gb = _value_and_grad(lambda x: chunked_logit_loss(x, broken, y, mask, **kw), s)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("kind", KINDS)
def test_logit_chunk_contract(kind):
    s, te, y, mask = _inputs(9)
    n = 6
    s2, y2, m2 = s.reshape(-1, V)[:n], y.reshape(-1)[:n], mask.reshape(-1)[:n]
    t2 = te.reshape(-1, V)[:n]
    teacher = t2 if kind == "dense" else _sparse(t2)
    coef = {"forward_kl": 0.3, "tvd": 2.0, "ce": 0.5}
    kw = dict(temperature=1.5, tail=_tail(kind))
    sums, grad = logit_chunk(s2.bfloat16(), teacher, y2, m2, coef, **kw)
    assert grad.dtype == torch.float32 and grad.shape == s2.shape
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in sums.values())
    sums_only, none = logit_chunk(s2.bfloat16(), teacher, y2, m2, coef, want_grad=False, **kw)
    assert none is None and set(sums_only) == set(coef)
    x = s2.bfloat16().float().requires_grad_(True)
    n_div, n_ce = int(m2.sum()), int((y2 != IGNORE_INDEX).sum())
    ref_sums = {
        "forward_kl": D.forward_kl(x, teacher, 1.5, m2, tail=_tail(kind)) * n_div,
        "tvd": D.tvd(x, teacher, 1.5, m2, tail=_tail(kind)) * n_div,
        "ce": D.cross_entropy(x, y2) * n_ce,
    }
    (g_ref,) = torch.autograd.grad(sum(coef[t] * ref_sums[t] for t in coef), x)
    for term in coef:
        torch.testing.assert_close(sums[term], ref_sums[term].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sums_only[term], sums[term], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, g_ref, rtol=1e-5, atol=1e-6)


def test_student_without_grad_and_parts_are_detached():
    s, te, y, mask = _inputs()
    loss, parts = chunked_logit_loss(s, te, y, mask, weights={"jsd": 1.0, "ce": 0.0})
    assert not loss.requires_grad and set(parts) == {"jsd", "ce"} and parts["ce"].item() > 0
    s.requires_grad_(True)
    loss, parts = chunked_logit_loss(s, te, y, mask, weights={"jsd": 1.0, "ce": 0.0})
    assert loss.requires_grad and not any(p.requires_grad for p in parts.values())
    # without a teacher, zero-weight divergences are dropped
    _, parts = chunked_logit_loss(s, None, y, weights={"forward_kl": 0.0, "ce": 1.0})
    assert set(parts) == {"ce"}


def test_reference_jsd_matches_trl_formula_at_one_beta():
    s, te, _, _ = _inputs(10)
    beta, T = 0.3, 2.0
    lq, lp = F.log_softmax(s / T, -1), F.log_softmax(te / T, -1)
    m = beta * lp.exp() + (1 - beta) * lq.exp()
    per_token = beta * (lp.exp() * (lp - m.log())).sum(-1) + (1 - beta) * (lq.exp() * (lq - m.log())).sum(-1)
    torch.testing.assert_close(D.jsd(s, te, beta, T), per_token.mean() * T**2)
    torch.testing.assert_close(D.jsd(s, te, 0.0, T), D.forward_kl(s, te, T))
    torch.testing.assert_close(D.jsd(s, te, 1.0, T), D.reverse_kl(s, te, T))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(labels="long"), "labels/mask shape"),
        (dict(mask="long"), "labels/mask shape"),
        (dict(teacher="short"), "trim the teacher"),
        (dict(teacher="sparse_short"), "sparse teacher"),
    ],
)
def test_misaligned_shapes_raise_distill_error(change, match):
    """Tokens are flattened and chunked by row: these shapes would be read misaligned, silently.
    (Settings are validated once, by the Objective: tests/losses/test_spec.py.)"""
    s, te, y, mask = _inputs()
    teacher = {"short": te[..., :-1], "sparse_short": _sparse(te)[:, :-1]}.get(change.get("teacher"), te)
    labels = torch.cat([y, y[:, :1]], 1) if "labels" in change else y
    mask = torch.cat([mask, mask[:, :1]], 1) if "mask" in change else mask
    with pytest.raises(DistillError, match=match):
        chunked_logit_loss(s, teacher, labels, mask, weights={"forward_kl": 1.0, "ce": 0.5})


def test_temperature_scaling_follows_hinton_convention():
    s, te, _, _ = _inputs(11)
    for fn in (D.forward_kl, D.reverse_kl, D.tvd):
        T = 3.0
        unscaled = fn(s / T, te / T, 1.0)
        assert fn(s, te, T).item() == pytest.approx(unscaled.item() * T**2, rel=1e-5)
    assert math.isfinite(D.jsd(s, te, 0.5, 3.0).item())
