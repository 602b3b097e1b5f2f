"""The compiled chunk kernels (``loss.compile``) against the eager ones they restate: values and
gradients, through ``chunked_logit_loss`` and the fused LM-head loss, and the eager fallback.

Compiling costs seconds per graph, so the cases share few shapes and temperatures."""

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from distill.losses import compiled as C
from distill.losses.divergences import IGNORE_INDEX, chunked_logit_loss, logit_chunk
from distill.losses.fused_linear import fused_linear_loss
from distill.losses.objective import Objective, Outputs
from distill.teacher.outputs import SparseTeacher

V = 97


def _inputs(n=40, seed=0, v=V):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g) * 2
    t = torch.randn(n, v, generator=g) * 3
    y = torch.randint(0, v, (n,), generator=g)
    y[:3] = IGNORE_INDEX
    m = y != IGNORE_INDEX
    m[5] = False  # distilled tokens differ from CE tokens
    m[1] = True
    return s, t, y, m


def _grad(fn, s):
    s = s.detach().requires_grad_(True)
    loss, parts = fn(s)
    (g,) = torch.autograd.grad(loss, s)
    return loss.detach(), parts, g


def _same(a, b, tol=2e-6):
    assert (a.float() - b.float()).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("coef", [{"forward_kl": 0.7, "ce": 0.3}, {"forward_kl": 1.0}, {"ce": 0.4}])
def test_the_kernel_computes_what_the_eager_chunk_computes(temperature, coef):
    s, t, y, m = _inputs()
    want, want_grad = logit_chunk(s, t, y, m, coef, temperature=temperature)
    got, got_grad = logit_chunk(s, t, y, m, coef, temperature=temperature, kernel=C.chunk_kernel)
    assert set(got) == set(want)
    for term in want:
        _same(got[term], want[term])
    _same(got_grad, want_grad)
    sums, none = logit_chunk(s, t, y, m, coef, temperature=temperature, want_grad=False, kernel=C.chunk_kernel)
    assert none is None and all(torch.allclose(sums[k], want[k]) for k in want)
    assert not C._failed, C._failed  # compiled, not the eager fallback (which would pass the checks above)


def _topk(t, k=8):
    lp, idx = torch.log_softmax(t, -1).topk(k, dim=-1)
    return SparseTeacher(lp, idx)


@pytest.mark.parametrize("coef", [{"forward_kl": 0.7, "ce": 0.3}, {"forward_kl": 1.0}])
def test_the_cache_bucket_kernel_computes_what_the_eager_chunk_computes(coef):
    s, t, y, m = _inputs()
    teacher = _topk(t)
    teacher.logprobs[m.logical_not()] = float("nan")  # rows not distilled may hold anything (padding)
    want, want_grad = logit_chunk(s, teacher, y, m, coef)
    got, got_grad = logit_chunk(s, teacher, y, m, coef, kernel=C.chunk_kernel)
    assert set(got) == set(want)
    for term in want:
        _same(got[term], want[term])
    _same(got_grad, want_grad)


def test_a_teacher_tail_far_below_float32_epsilon_keeps_its_gradient():
    """The student's tail mass (outside the teacher's top-k) is a difference of sums in float64: a tail
    of 1e-9 (far below float32's 6e-8 relative step at 1) still gets its gradient, as in the eager kernel."""
    s, t, y, m = _inputs(n=8, v=20)
    s[:, 8:] -= 25.0  # the student puts ~1e-9 of its mass on the 12 tokens outside the top 8
    teacher = _topk(t)
    teacher = SparseTeacher(teacher.logprobs, torch.arange(8).expand(8, 8).clone())
    want, want_grad = logit_chunk(s, teacher, y, m, {"forward_kl": 1.0})
    got, got_grad = logit_chunk(s, teacher, y, m, {"forward_kl": 1.0}, kernel=C.chunk_kernel)
    _same(got["forward_kl"], want["forward_kl"], 1e-5)
    tail_want, tail_got = want_grad[:, 8:], got_grad[:, 8:]
    assert tail_want.abs().max() > 0
    assert ((tail_got - tail_want).abs() <= 1e-3 * tail_want.abs()).all()


def test_settings_without_a_compiled_kernel_run_eagerly():
    s, t, y, m = _inputs()
    teacher = _topk(t)
    assert C.chunk_kernel(s, teacher, y, m, {"forward_kl": 1.0}, 1.0, "renormalize", True, None) is None
    assert C.chunk_kernel(s, teacher, y, m, {"forward_kl": 1.0}, 2.0, "bucket", True, None) is None
    assert C.chunk_kernel(s, t, y, m, {"jsd": 1.0, "ce": 0.5}, 1.0, "bucket", True, None) is None


def test_without_a_teacher_the_kernel_is_cross_entropy():
    s, _, y, m = _inputs()
    want, want_grad = logit_chunk(s, None, y, m, {"ce": 1.0})
    got, got_grad = logit_chunk(s, None, y, m, {"ce": 1.0}, kernel=C.chunk_kernel)
    _same(got["ce"], want["ce"])
    _same(got_grad, want_grad)


def test_bf16_logits_and_a_bf16_gradient_buffer():
    s, t, y, m = _inputs()
    coef = {"forward_kl": 1.0, "ce": 0.5}
    want, want_grad = logit_chunk(s.bfloat16(), t.bfloat16(), y, m, coef)
    out = torch.empty(s.shape, dtype=torch.bfloat16)
    got, got_grad = logit_chunk(s.bfloat16(), t.bfloat16(), y, m, coef, out=out, kernel=C.chunk_kernel)
    assert got_grad is out
    _same(got["forward_kl"], want["forward_kl"], 1e-5)
    _same(got_grad, want_grad.bfloat16(), 1e-2)  # one bf16 rounding of the same float32 gradient


@pytest.mark.parametrize("weights", [{"forward_kl": 1.0, "ce": 0.5}, {"ce": 1.0}])
def test_the_chunked_loss_with_compiled_chunks_equals_the_eager_one(weights):
    s, t, y, m = _inputs(n=70)
    kw = dict(weights=weights, chunk_size=32)  # 32, 32, then a 6-row chunk: the kernel sees a new size
    teacher = t if "forward_kl" in weights else None
    want_loss, want_parts, want_grad = _grad(lambda x: chunked_logit_loss(x, teacher, y, m, **kw), s)
    got_loss, got_parts, got_grad = _grad(
        lambda x: chunked_logit_loss(x, teacher, y, m, kernel=C.chunk_kernel, **kw), s
    )
    _same(got_loss, want_loss)
    for term in want_parts:
        _same(got_parts[term], want_parts[term])
    _same(got_grad, want_grad)
    # A scaled upstream gradient still reaches the logits (the unscaled case skips the multiply).
    s2 = s.detach().requires_grad_(True)
    (3.0 * chunked_logit_loss(s2, teacher, y, m, kernel=C.chunk_kernel, **kw)[0]).backward()
    _same(s2.grad, 3.0 * want_grad)


def test_the_fused_lm_head_loss_with_compiled_chunks_equals_the_eager_one():
    g = torch.Generator().manual_seed(3)
    h, th = torch.randn(2, 20, 16, generator=g), torch.randn(2, 20, 24, generator=g)
    w, tw = torch.randn(V, 16, generator=g) * 0.3, torch.randn(V, 24, generator=g) * 0.3
    y = torch.randint(0, V, (2, 20), generator=g)
    y[0, :4] = IGNORE_INDEX
    kw = dict(weights={"forward_kl": 1.0, "ce": 0.5}, temperature=2.0, chunk_size=16)

    def run(kernel):
        hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        loss, parts = fused_linear_loss(hh, ww, th, tw, y, kernel=kernel, **kw)
        loss.backward()
        return loss.detach(), parts, hh.grad, ww.grad

    for got, want in zip(run(C.chunk_kernel), run(None)):
        if isinstance(want, dict):
            for term in want:
                _same(got[term], want[term])
        else:
            _same(got, want)


def test_new_coefficients_and_temperatures_do_not_recompile():
    s, t, y, m = _inputs(n=24, seed=1)
    logit_chunk(s, t, y, m, {"forward_kl": 1.0, "ce": 0.5}, temperature=1.5, kernel=C.chunk_kernel)
    before = counters["stats"]["unique_graphs"]
    for c, T in ((0.2, 1.7), (0.9, 3.0), (0.4, 1.2)):  # a loss schedule moving weights and temperature
        logit_chunk(s, t, y, m, {"forward_kl": c, "ce": 1 - c}, temperature=T, kernel=C.chunk_kernel)
    assert counters["stats"]["unique_graphs"] == before


def test_auto_compiles_from_the_vocabulary_threshold_and_the_setting_wins():
    small = Outputs(logits=torch.zeros(1, 2, 512), vocab_size=512)
    large = Outputs(logits=torch.zeros(1, 2, C.COMPILE_FROM_VOCAB), vocab_size=C.COMPILE_FROM_VOCAB)
    auto = Objective({"forward_kl": 1.0, "ce": 0.5})
    assert auto.compile == "auto"
    assert auto._kernel(small) is None and auto._kernel(large) is C.chunk_kernel
    assert Objective({"ce": 1.0}, compile=True)._kernel(small) is C.chunk_kernel
    assert Objective({"ce": 1.0}, compile=False)._kernel(large) is None


def test_a_bad_setting_is_one_line():
    with pytest.raises(Exception, match=r"loss.compile must be auto, true or false, got 'yes'"):
        Objective({"ce": 1.0}, compile="yes")


def test_when_compiling_fails_the_eager_kernel_runs_and_says_so(monkeypatch, caplog):
    def broken(name):
        def kernel(*_):
            raise RuntimeError("InductorError: no C++ compiler found\nmore detail")

        return kernel

    monkeypatch.setattr(C, "compiled", broken)
    monkeypatch.setattr(C, "_failed", [])
    s, t, y, m = _inputs()
    coef = {"forward_kl": 1.0, "ce": 0.5}
    with caplog.at_level(logging.WARNING, logger="distill.losses.compiled"):
        got, got_grad = logit_chunk(s, t, y, m, coef, kernel=C.chunk_kernel)
    want, want_grad = logit_chunk(s, t, y, m, coef)
    assert torch.equal(got_grad, want_grad) and torch.equal(got["ce"], want["ce"])
    assert "compiling the loss kernel failed (InductorError: no C++ compiler found); running it eagerly" in caplog.text
    assert C.chunk_kernel(s, t, y, m, coef, 1.0, "bucket", True, None) is None  # eager from then on, no retry
