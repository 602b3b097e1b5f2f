import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses.kd import IGNORE_INDEX, KDLoss, cross_entropy, forward_kl, kd_ce_loss, kd_ce_reference


def _inputs(seed=0, b=3, t=11, v=37):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, t, v, generator=g) * 3).requires_grad_(True)
    te = torch.randn(b, t, v, generator=g) * 3
    y = torch.randint(0, v, (b, t), generator=g)
    y[0, :4] = IGNORE_INDEX
    return s, te, y


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (2.0, 0.3)])
def test_fused_matches_reference_values_and_grads(temperature, chunk, weights):
    s, t, y = _inputs()
    ref = kd_ce_reference(s, t, y, *weights, temperature)
    (g_ref,) = torch.autograd.grad(ref, s)
    loss, kl, ce = kd_ce_loss(s, t, y, *weights, temperature, chunk_size=chunk)
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)
    mask = y != IGNORE_INDEX
    torch.testing.assert_close(kl, forward_kl(s, t, temperature, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce, cross_entropy(s, y), rtol=1e-5, atol=1e-6)


def test_forward_kl_is_zero_for_identical_and_positive_otherwise():
    s, t, _ = _inputs()
    assert forward_kl(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert forward_kl(s, t).item() > 0.1


def test_forward_kl_matches_torch_kl_div_times_t_squared():
    s, t, _ = _inputs(1)
    T = 3.0
    expected = F.kl_div(
        F.log_softmax(s / T, -1).flatten(0, 1), F.log_softmax(t / T, -1).flatten(0, 1), log_target=True,
        reduction="batchmean",
    ) * T**2
    torch.testing.assert_close(forward_kl(s, t, T), expected)


def test_bf16_logits_give_float32_loss_and_bf16_grad():
    s, t, y = _inputs()
    sb = s.detach().bfloat16().requires_grad_(True)
    loss, _, _ = kd_ce_loss(sb, t.bfloat16(), y, 1.0, 0.5, 2.0)
    loss.backward()
    assert loss.dtype == torch.float32 and sb.grad.dtype == torch.bfloat16
    ref = kd_ce_reference(sb.detach().float(), t.bfloat16().float(), y, 1.0, 0.5, 2.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_kdloss_without_teacher_is_plain_cross_entropy():
    s, _, y = _inputs()
    terms = KDLoss(kl_weight=1.0, ce_weight=0.1)(s, None, y)
    assert set(terms) == {"loss", "ce"}
    torch.testing.assert_close(terms["loss"], cross_entropy(s, y))


def test_kdloss_returns_each_term():
    s, t, y = _inputs()
    terms = KDLoss(kl_weight=0.7, ce_weight=0.3, temperature=2.0)(s, t, y)
    torch.testing.assert_close(terms["loss"], 0.7 * terms["kl"] + 0.3 * terms["ce"])


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"kl_weight": -1}, {"kl_weight": 0, "ce_weight": 0}])
def test_kdloss_rejects_bad_settings(kwargs):
    with pytest.raises(DistillError):
        KDLoss(**kwargs)
