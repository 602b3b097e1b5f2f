"""The fused LM-head loss equals "project to logits, then the plain loss" in value and gradient."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distill.errors import DistillError
from distill.losses.divergences import IGNORE_INDEX, chunked_logit_loss, cross_entropy, forward_kl
from distill.losses.fused_linear import MAX_AUTO_CHUNK, fused_chunk, fused_linear_loss
from distill.teacher.outputs import SparseTeacher

B, N, H_S, H_T, V = 2, 23, 16, 12, 37  # 46 tokens: no chunk size below divides it
V_S, V_T = V + 5, V + 3  # LM-head rows past the vocabulary are padding


def _inputs(seed=0, dtype=torch.float32, bias=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, N, H_S, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(V_S, H_S, generator=g) * 0.5).to(dtype).requires_grad_(True)
    th = torch.randn(B, N, H_T, generator=g).to(dtype)
    tw = (torch.randn(V_T, H_T, generator=g) * 0.5).to(dtype)
    y = torch.randint(0, V, (B, N), generator=g)
    y[0, :5] = IGNORE_INDEX
    y[1, -2:] = IGNORE_INDEX
    b = (torch.randn(V_S, generator=g).to(dtype).requires_grad_(True)) if bias else None
    return h, w, th, tw, y, b


def _naive(h, w, th, tw, y, weights, temperature=1.0, b=None, mask=None):
    """Materialized logits (float32) and the reference terms, through autograd."""
    s = h.float() @ w[:V].float().t() + (0 if b is None else b[:V].float())
    mask = y != IGNORE_INDEX if mask is None else mask
    parts = {"ce": cross_entropy(s, y)}
    if th is not None:
        with torch.no_grad():
            t = th.float() @ tw[:V].float().t()
        parts["forward_kl"] = forward_kl(s, t, temperature, mask)
    parts = {k: v for k, v in parts.items() if k in weights}
    return sum(weights[k] * v for k, v in parts.items()), parts


def _grads(loss, *xs):
    return torch.autograd.grad(loss, [x for x in xs if x is not None])


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("chunk", [1, 5, 16, 1024])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("weights", [{"forward_kl": 1.0}, {"forward_kl": 0.7, "ce": 0.3}, {"ce": 1.0}])
def test_fp32_matches_naive_values_and_grads(chunk, temperature, weights):
    h, w, th, tw, y, _ = _inputs()
    ref, ref_parts = _naive(h, w, th, tw, y, weights, temperature)
    loss, parts = fused_linear_loss(
        h, w, th, tw, y, weights=weights, temperature=temperature, vocab_size=V, chunk_size=chunk
    )
    _close(loss, ref)
    assert parts.keys() == ref_parts.keys()
    for term in parts:
        _close(parts[term], ref_parts[term])
        assert not parts[term].requires_grad
    for got, want in zip(_grads(loss, h, w), _grads(ref, h, w)):
        _close(got, want)


def test_bias_gets_gradients_and_padding_rows_get_none():
    h, w, th, tw, y, b = _inputs(1, bias=True)
    weights = {"forward_kl": 0.5, "ce": 0.5}
    ref, _ = _naive(h, w, th, tw, y, weights, 2.0, b=b)
    loss, _ = fused_linear_loss(
        h,
        w,
        th,
        tw,
        y,
        weights=weights,
        temperature=2.0,
        vocab_size=V,
        chunk_size=7,
        student_bias=b,
        teacher_bias=torch.zeros(V_T),
    )
    got, want = _grads(loss, h, w, b), _grads(ref, h, w, b)
    for g, r in zip(got, want):
        _close(g, r)
    assert got[1][V:].abs().max() == 0 and got[2][V:].abs().max() == 0
    assert got[1][:V].abs().max() > 0


def test_distill_mask_differs_from_labels():
    h, w, th, tw, y, _ = _inputs(2)
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(3)) > 0.3  # includes unlabelled tokens
    weights = {"forward_kl": 1.0, "ce": 0.5}
    ref, ref_parts = _naive(h, w, th, tw, y, weights, 1.5, mask=mask)
    loss, parts = fused_linear_loss(h, w, th, tw, y, mask, weights=weights, temperature=1.5, vocab_size=V, chunk_size=9)
    _close(loss, ref)
    _close(parts["forward_kl"], ref_parts["forward_kl"])
    for got, want in zip(_grads(loss, h, w), _grads(ref, h, w)):
        _close(got, want)


def test_without_teacher_is_cross_entropy_only():
    h, w, _, _, y, _ = _inputs(4)
    ref, _ = _naive(h, w, None, None, y, {"ce": 1.0})
    loss, parts = fused_linear_loss(
        h, w, None, None, y, weights={"forward_kl": 0.0, "ce": 1.0}, vocab_size=V, chunk_size=10
    )
    assert set(parts) == {"ce"}
    _close(loss, ref)
    for got, want in zip(_grads(loss, h, w), _grads(ref, h, w)):
        _close(got, want)


def test_same_width_same_rows_needs_no_vocab_size():
    h, w, _, _, y, _ = _inputs(5)
    th, tw = torch.randn(B, N, H_S), torch.randn(V_S, H_S)
    loss, _ = fused_linear_loss(h, w, th, tw, y, weights={"forward_kl": 1.0}, chunk_size=8)
    s, t = h @ w.t(), th @ tw.t()
    _close(loss, forward_kl(s, t, 1.0, y != IGNORE_INDEX))


def test_grad_output_scales_the_stored_gradients():
    h, w, th, tw, y, _ = _inputs(6)
    kw = dict(weights={"forward_kl": 1.0, "ce": 0.2}, vocab_size=V, chunk_size=8)
    g1 = _grads(fused_linear_loss(h, w, th, tw, y, **kw)[0], h, w)
    g3 = _grads(3.0 * fused_linear_loss(h, w, th, tw, y, **kw)[0] + h.sum(), h, w)
    _close(g3[0], 3.0 * g1[0] + 1.0)
    _close(g3[1], 3.0 * g1[1])


def test_frozen_head_and_no_grad_mode():
    h, w, th, tw, y, _ = _inputs(7)
    w.requires_grad_(False)
    loss, _ = fused_linear_loss(h, w, th, tw, y, weights={"forward_kl": 1.0}, vocab_size=V, chunk_size=8)
    loss.backward()
    assert h.grad is not None and w.grad is None
    with torch.no_grad():
        value, _ = fused_linear_loss(h, w, th, tw, y, weights={"forward_kl": 1.0}, vocab_size=V, chunk_size=8)
    assert not value.requires_grad
    _close(value, loss.detach())


def test_bf16_close_to_fp32_with_bf16_grads():
    h, w, th, tw, y, b = _inputs(8, dtype=torch.bfloat16, bias=True)
    weights = {"forward_kl": 1.0, "ce": 0.5}
    ref, _ = _naive(h, w, th, tw, y, weights, 2.0, b=b)  # float32 math on the same bf16 values
    loss, _ = fused_linear_loss(
        h, w, th, tw, y, weights=weights, temperature=2.0, vocab_size=V, chunk_size=7, student_bias=b
    )
    assert loss.dtype == torch.float32
    _close(loss, ref, rtol=2e-2, atol=1e-2)
    got, want = _grads(loss, h, w, b), _grads(ref, h, w, b)
    for g, r in zip(got, want):
        assert g.dtype == torch.bfloat16
        _close(g.float(), r.float(), rtol=5e-2, atol=2e-3)


def test_under_cpu_autocast_matmuls_in_bf16_and_grads_keep_param_dtype():
    h, w, th, tw, y, _ = _inputs(9)
    weights = {"forward_kl": 1.0, "ce": 0.5}
    ref, _ = _naive(h, w, th, tw, y, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = fused_linear_loss(h, w, th, tw, y, weights=weights, vocab_size=V, chunk_size=8)
    exact, _ = fused_linear_loss(h, w, th, tw, y, weights=weights, vocab_size=V, chunk_size=8)
    assert loss.item() != exact.item()  # the matmuls did run in bf16
    _close(loss, ref, rtol=2e-2, atol=1e-2)
    for g, r in zip(_grads(loss, h, w), _grads(ref, h, w)):
        assert g.dtype == torch.float32
        _close(g, r, rtol=5e-2, atol=2e-3)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materializes_all_tokens_logits():
    h, w, th, tw, y, _ = _inputs(10)
    with _LargestTensor() as probe:
        loss, _ = fused_linear_loss(h, w, th, tw, y, weights={"forward_kl": 1.0, "ce": 1.0}, vocab_size=V, chunk_size=4)
        loss.backward()
    assert B * N * V > max(V_S * H_S, B * N * H_S, 4 * V_S)  # else the check below proves nothing
    assert probe.largest <= max(V_S * H_S, B * N * H_S, 4 * V_S)  # weight or hidden grads, one chunk's logits


def test_the_chunk_grows_to_the_hidden_size_up_to_a_cap():
    """Each chunk pays a pass over the [V × H] weight gradient, so chunks of fewer than H tokens waste it."""
    assert fused_chunk(256, 64) == 256  # a chunk already past the hidden size is kept
    assert fused_chunk(256, 384) == 384 and fused_chunk(256, 4096) == MAX_AUTO_CHUNK == 512
    assert fused_chunk(2048, 1024) == 2048  # a larger loss.chunk_size is the user's


def test_the_objective_runs_the_fused_loss_at_the_grown_chunk(monkeypatch):
    import distill.losses.objective as objective

    seen = []
    real = objective.fused_linear_loss
    monkeypatch.setattr(
        objective, "fused_linear_loss", lambda *a, **kw: seen.append(kw["chunk_size"]) or real(*a, **kw)
    )
    h, w, th, tw, y, _ = _inputs(10)
    obj = objective.Objective({"forward_kl": 1.0}, fused_linear=True, chunk_size=4)
    student = objective.Outputs(last_hidden=h, head_weight=w, vocab_size=V)
    teacher = objective.Outputs(last_hidden=th, head_weight=tw, vocab_size=V)
    obj(student, teacher, y)
    assert seen == [fused_chunk(4, H_S)] and seen[0] == H_S > 4


@pytest.mark.parametrize("term", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_every_divergence_matches_plain_reference(term, temperature):
    from distill.losses import divergences

    h, w, th, tw, y, b = _inputs(12, bias=True)
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(13)) > 0.2
    weights = {term: 1.0, "ce": 0.3}
    s = h @ w[:V].t() + b[:V]
    with torch.no_grad():
        t = th @ tw[:V].t()
    extra = dict(beta=0.3) if term == "jsd" else {}
    ref_parts = {
        term: getattr(divergences, term)(s, t, temperature=temperature, mask=mask, **extra),
        "ce": divergences.cross_entropy(s, y),
    }
    ref = ref_parts[term] + 0.3 * ref_parts["ce"]
    loss, parts = fused_linear_loss(
        h,
        w,
        th,
        tw,
        y,
        mask,
        weights=weights,
        temperature=temperature,
        beta=0.3,
        vocab_size=V,
        chunk_size=7,
        student_bias=b,
    )
    _close(loss, ref)
    for k in weights:
        _close(parts[k], ref_parts[k])
    for got, want in zip(_grads(loss, h, w, b), _grads(ref, h, w, b)):
        _close(got, want, rtol=1e-5, atol=1e-6)


def test_all_terms_at_once_match_chunked_logit_loss_on_materialized_logits():
    h, w, th, tw, y, _ = _inputs(14)
    kw = dict(
        weights={"forward_kl": 0.2, "reverse_kl": 0.3, "jsd": 0.4, "tvd": 0.5, "ce": 0.6}, temperature=1.5, beta=0.7
    )
    s = h @ w[:V].t()
    with torch.no_grad():
        t = th @ tw[:V].t()
    ref, ref_parts = chunked_logit_loss(s, t, y, chunk_size=1000, **kw)
    loss, parts = fused_linear_loss(h, w, th, tw, y, vocab_size=V, chunk_size=5, **kw)
    _close(loss, ref)
    for k in ref_parts:
        _close(parts[k], ref_parts[k])
    for got, want in zip(_grads(loss, h, w), _grads(ref, h, w)):
        _close(got, want)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_a_cached_top_k_teacher_matches_chunked_logit_loss_on_materialized_logits(tail):
    """``teacher_topk`` (the cache's top-k, no teacher head): the same loss as the chunked one on the
    student's materialized logits, with ``tail`` read the same way; pieces not in the top-k get gradient."""
    h, w, th, tw, y, _ = _inputs(16)
    with torch.no_grad():
        lp, idx = torch.log_softmax(th @ tw[:V].t(), -1).topk(6, dim=-1)
    topk = SparseTeacher(lp, idx)
    kw = dict(weights={"forward_kl": 1.0, "ce": 0.5}, tail=tail)
    ref, ref_parts = chunked_logit_loss(h @ w[:V].t(), topk, y, chunk_size=1000, **kw)
    loss, parts = fused_linear_loss(h, w, None, None, y, vocab_size=V, chunk_size=5, teacher_topk=topk, **kw)
    _close(loss, ref)
    for k in ref_parts:
        _close(parts[k], ref_parts[k])
    for got, want in zip(_grads(loss, h, w), _grads(ref, h, w)):
        _close(got, want)
    with pytest.raises(DistillError, match="teacher_topk"):
        fused_linear_loss(h, w, th, tw, y, vocab_size=V, teacher_topk=topk, **kw)


def test_non_contiguous_hidden_slice_as_in_shifted_causal_lm():
    h, w, th, tw, y, _ = _inputs(15)
    hs, ths, ys = h[:, :-1], th[:, :-1], y[:, 1:]
    kw = dict(weights={"forward_kl": 1.0, "ce": 1.0}, vocab_size=V, chunk_size=6)
    ref, _ = _naive(hs, w, ths, tw, ys, kw["weights"])
    loss, _ = fused_linear_loss(hs, w, ths, tw, ys, **kw)
    _close(loss, ref)
    for got, want in zip(_grads(loss, h, w), _grads(ref, h, w)):
        _close(got, want)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(th=torch.randn(B, N + 1, H_T)), "teacher_hidden tokens"),
        (dict(y=torch.zeros(B, N + 1, dtype=torch.long)), "labels/mask shape"),
        (dict(mask=torch.ones(B, N + 1, dtype=torch.bool)), "labels/mask shape"),
        (dict(b=torch.zeros(1)), "bias shape"),
        (dict(vocab_size=V_T + 1), "vocab_size"),
        (dict(vocab_size=None), "pass vocab_size"),
        (dict(tw=None), "both be given"),
        (dict(th=None, tw=None, tb=torch.zeros(V_T)), "teacher_bias only with them"),
    ],
)
def test_rejects_shapes_it_would_read_wrongly(change, message):
    """Only what would otherwise go wrong silently (misaligned tokens, a broadcast bias, cut or
    dropped vocabulary) is checked here; settings are validated once, by the Objective
    (tests/losses/test_spec.py), and a hidden size that does not fit fails in the matmul itself."""
    h, w, th, tw, y, _ = _inputs()
    args = dict(h=h, w=w, th=th, tw=tw, y=y, mask=None, b=None, tb=None, vocab_size=V)
    args.update(change)
    with pytest.raises(DistillError, match=message):
        fused_linear_loss(
            args["h"],
            args["w"],
            args["th"],
            args["tw"],
            args["y"],
            args["mask"],
            weights={"forward_kl": 1.0, "ce": 0.5},
            vocab_size=args["vocab_size"],
            chunk_size=8,
            student_bias=args["b"],
            teacher_bias=args["tb"],
        )
