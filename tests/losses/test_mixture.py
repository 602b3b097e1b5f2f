"""The mixture of several teachers (``distill.losses.mixture``) against plain references: the dense
mixture is Σ w_i softmax(z_i / T), and the loss on it equals a hand-computed KL, values and gradients;
the top-k mixture keeps the union's mass and puts Σ w_i tail_i in the tail."""

import pytest
import torch
import torch.nn.functional as F

from distill.errors import DistillError
from distill.losses.divergences import chunked_logit_loss, forward_kl
from distill.losses.mixture import as_logits, mixture_logprobs, normalized, sparse_mixture, tail_mass, top_k_of
from distill.teacher.outputs import SparseTeacher

V = 11


def _logits(seed, shape=(2, 3, V), scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _dense(sparse: SparseTeacher, vocab: int) -> torch.Tensor:
    """The top-k probabilities placed in a vocabulary-sized vector (tail left out)."""
    return torch.zeros(*sparse.shape[:-1], vocab).scatter_(-1, sparse.indices, sparse.logprobs.exp())


def test_weights_are_normalized_and_bad_ones_refused():
    assert normalized([3, 1]) == [0.75, 0.25]
    for bad in ([0, 0], [1, -1]):
        with pytest.raises(DistillError, match="weights must be >= 0 and not all 0"):
            normalized(bad)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_dense_mixture_is_the_weighted_sum_of_tempered_distributions(T):
    a, b = _logits(0), _logits(1)
    want = 0.7 * F.softmax(a / T, -1) + 0.3 * F.softmax(b / T, -1)
    got = mixture_logprobs([a, b], [0.7, 0.3], T).exp()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 3))


def test_a_zero_weight_teacher_is_left_out():
    a, b = _logits(0), _logits(1)
    torch.testing.assert_close(mixture_logprobs([a, b], [1.0, 0.0]), F.log_softmax(a, -1))


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_loss_on_the_mixture_equals_the_hand_computed_kl_values_and_gradients(T):
    """The engine softens teacher logits by T: ``as_logits`` must make it see the mixture itself."""
    a, b = _logits(0), _logits(1)
    s = _logits(2).requires_grad_()
    labels = torch.zeros(2, 3, dtype=torch.long)
    teacher = as_logits(mixture_logprobs([a, b], [0.6, 0.4], T), T)
    loss, _ = chunked_logit_loss(s, teacher, labels, weights={"forward_kl": 1.0}, temperature=T, chunk_size=4)
    (grad,) = torch.autograd.grad(loss, s)

    s_ref = s.detach().clone().requires_grad_()
    p = 0.6 * F.softmax(a / T, -1) + 0.4 * F.softmax(b / T, -1)
    kl = (p * (p.log() - F.log_softmax(s_ref / T, -1))).sum(-1).mean() * T**2  # by hand, T² as everywhere
    (grad_ref,) = torch.autograd.grad(kl, s_ref)
    torch.testing.assert_close(loss, kl)
    torch.testing.assert_close(grad, grad_ref)


def test_forward_kl_summed_over_teachers_has_the_mixture_s_gradient():
    """Σ w_i KL(p_i‖q) = KL(p_mix‖q) + const: the README's claim for teachers_mix=sum vs mixture."""
    a, b, s = _logits(0), _logits(1), _logits(2).requires_grad_()
    summed = 0.6 * forward_kl(s, a) + 0.4 * forward_kl(s, b)
    mixed = forward_kl(s, mixture_logprobs([a, b], [0.6, 0.4]))
    g_sum, g_mix = torch.autograd.grad(summed, s)[0], torch.autograd.grad(mixed, s)[0]
    torch.testing.assert_close(g_sum, g_mix)
    assert summed.item() > mixed.item()  # the constant: the teachers' spread around their mixture


def test_top_k_of_a_dense_teacher():
    z = _logits(0)
    t = top_k_of(z, 4)
    torch.testing.assert_close(t.logprobs, F.log_softmax(z, -1).topk(4, -1).values)
    assert t.indices.dtype == torch.long


def test_sparse_mixture_on_the_union_of_supports():
    a = SparseTeacher(torch.tensor([[0.5, 0.3]]).log(), torch.tensor([[1, 2]]))
    b = SparseTeacher(torch.tensor([[0.6, 0.2]]).log(), torch.tensor([[2, 5]]))
    mix = sparse_mixture([a, b], [0.5, 0.5])
    # the union {1, 2, 5}: token 2 is in both; token 1 only in a's top-k, token 5 only in b's
    assert mix.shape == (1, 3)
    got = dict(zip(mix.indices[0].tolist(), mix.logprobs[0].exp().tolist()))
    assert got == pytest.approx({2: 0.45, 1: 0.25, 5: 0.1})
    assert mix.indices[0].tolist() == [2, 1, 5]  # best first, as a cache stores them
    # the tail: Σ w_i tail_i = 0.5 · 0.2 + 0.5 · 0.2
    assert tail_mass(mix).item() == pytest.approx(0.2)


def test_sparse_mixture_keeps_the_smallest_union_and_moves_the_rest_to_the_tail():
    """Positions whose unions differ in size: each keeps K = the smallest union, the rest in its tail."""
    a = SparseTeacher(torch.tensor([[0.5, 0.3], [0.5, 0.3]]).log(), torch.tensor([[1, 2], [1, 2]]))
    b = SparseTeacher(torch.tensor([[0.6, 0.2], [0.6, 0.2]]).log(), torch.tensor([[2, 1], [3, 4]]))
    mix = sparse_mixture([a, b], [0.5, 0.5])
    assert mix.shape == (2, 2)  # row 0's union is {1, 2}; row 1's {1, 2, 3, 4} keeps its best two
    assert tail_mass(mix)[0].item() == pytest.approx(0.2)
    assert mix.indices[1].tolist() == [3, 1]
    assert tail_mass(mix)[1].item() == pytest.approx(1 - 0.3 - 0.25)


def test_sparse_mixture_of_full_supports_is_the_dense_mixture():
    """With k = V no token is unknown: the union mixture is exactly the dense one."""
    a, b = _logits(0), _logits(1)
    mix = sparse_mixture([top_k_of(a, V), top_k_of(b, V)], [0.3, 0.7])
    torch.testing.assert_close(_dense(mix, V).log(), mixture_logprobs([a, b], [0.3, 0.7]))


def test_sparse_mixture_equals_a_hand_built_one_on_random_teachers():
    a, b = top_k_of(_logits(0), 4), top_k_of(_logits(1), 3)
    mix = sparse_mixture([a, b], [0.25, 0.75])
    by_hand = 0.25 * _dense(a, V) + 0.75 * _dense(b, V)  # the unknown entries count as 0 (in the tail)
    union = (by_hand > 0).sum(-1)
    assert mix.shape[-1] == int(union.min())
    kept = _dense(mix, V)
    torch.testing.assert_close(kept, torch.where(kept > 0, by_hand, 0.0))  # the kept entries: exact
    assert (tail_mass(mix) >= 0.25 * tail_mass(a) + 0.75 * tail_mass(b) - 1e-6).all()


def test_a_cached_mixture_feeds_the_loss_like_one_cache():
    a, b = top_k_of(_logits(0), 4), top_k_of(_logits(1), 4)
    s = _logits(2).requires_grad_()
    labels = torch.zeros(2, 3, dtype=torch.long)
    for tail in ("bucket", "renormalize"):
        loss, _ = chunked_logit_loss(
            s, sparse_mixture([a, b], [0.5, 0.5]), labels, weights={"forward_kl": 1.0}, tail=tail
        )
        assert torch.isfinite(loss) and loss.item() > 0
