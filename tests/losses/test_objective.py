"""The Objective: composition of terms, teacher kinds, binding of representation terms.
(Its one validation: test_spec.py; the registry it derives from: test_terms.py.)"""

import pytest
import torch
import torch.nn.functional as F

from distill.distillation import model_outputs
from distill.errors import DistillError
from distill.losses.divergences import forward_kl, reverse_kl
from distill.losses.objective import Objective, Outputs
from distill.student.scratch import build_llama
from distill.teacher.outputs import SparseTeacher


def _logits(seed=0, n=(2, 6), vocab=40):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(*n, vocab, generator=g),
        torch.randn(*n, vocab, generator=g),
        torch.randint(0, vocab, n, generator=g),
    )


def test_without_teacher_it_is_plain_cross_entropy():
    s, _, y = _logits()
    y[0, :2] = -100
    terms = Objective({"forward_kl": 1.0, "ce": 0.5})(Outputs(logits=s), None, y)
    assert set(terms) == {"loss", "ce"}
    torch.testing.assert_close(terms["loss"], F.cross_entropy(s.flatten(0, 1), y.flatten(), ignore_index=-100))


def test_weighted_sum_of_terms_matches_references():
    s, t, y = _logits()
    obj = Objective({"forward_kl": 0.3, "reverse_kl": 0.7, "ce": 0.5}, temperature=2.0)
    terms = obj(Outputs(logits=s), Outputs(logits=t), y)
    want = (
        0.3 * forward_kl(s, t, 2.0) + 0.7 * reverse_kl(s, t, 2.0) + 0.5 * F.cross_entropy(s.flatten(0, 1), y.flatten())
    )
    torch.testing.assert_close(terms["loss"], want, rtol=1e-5, atol=1e-6)
    assert set(terms) == {"loss", "forward_kl", "reverse_kl", "ce"}


def test_sparse_teacher_goes_through_the_same_objective():
    s, t, y = _logits()
    lp, idx = torch.log_softmax(t, -1).topk(8, -1)
    terms = Objective({"forward_kl": 1.0})(Outputs(logits=s), Outputs(logits=SparseTeacher(lp, idx)), y)
    torch.testing.assert_close(terms["loss"], forward_kl(s, SparseTeacher(lp, idx), 1.0), rtol=1e-5, atol=1e-6)


def test_fused_linear_equals_logits_path():
    torch.manual_seed(0)
    h_s, h_t = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 5, 24)
    w_s, w_t = torch.randn(44, 16, requires_grad=True), torch.randn(44, 24)  # 4 padding rows past vocab 40
    y = torch.randint(0, 40, (2, 5))
    fused = Objective({"forward_kl": 1.0, "ce": 0.5}, fused_linear=True)(
        Outputs(last_hidden=h_s, head_weight=w_s, vocab_size=40),
        Outputs(last_hidden=h_t, head_weight=w_t, vocab_size=40),
        y,
    )
    plain = Objective({"forward_kl": 1.0, "ce": 0.5})(
        Outputs(logits=(h_s @ w_s.T)[..., :40]), Outputs(logits=(h_t @ w_t.T)[..., :40]), y
    )
    torch.testing.assert_close(fused["loss"], plain["loss"], rtol=1e-5, atol=1e-6)
    g_fused = torch.autograd.grad(fused["loss"], (h_s, w_s))
    g_plain = torch.autograd.grad(plain["loss"], (h_s, w_s))
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_representation_terms_bind_to_real_models_and_train_projections():
    torch.manual_seed(0)
    teacher = build_llama(vocab_size=50, hidden_size=32, num_layers=4, num_heads=4)
    student = build_llama(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2)
    for m in (teacher, student):
        m.set_attn_implementation("eager")
    obj = Objective({"forward_kl": 1.0, "hidden": 1.0, "attention": 0.5}).bind(student, teacher)
    assert obj.hidden_loss is not None and len(list(obj.hidden_loss.parameters())) == 2  # widths differ: projections
    x = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        t_out = model_outputs(teacher, x, 50, obj)
    terms = obj(model_outputs(student, x, 50, obj), t_out, torch.randint(0, 50, (2, 7)))
    assert {"forward_kl", "hidden", "attention"} <= set(terms) and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is not None for p in obj.hidden_loss.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_representation_terms_need_a_live_teacher():
    student = build_llama(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2)
    with pytest.raises(DistillError, match=r"^hidden-state distillation \(loss.weights.hidden\) needs a live teacher"):
        Objective({"forward_kl": 1.0, "hidden": 0.0}).bind(student, None)  # at weight 0 too: a schedule may raise it
    assert Objective({"forward_kl": 1.0}).bind(student, None).hidden_loss is None  # teacher-free: nothing to bind
