"""The sampled teacher cache (``teacher.cache_mode=sample``): the draws, their storage, and the claim the
design rests on: the existing bucket forward KL on the empirical distribution p̂ = count / N has the
gradient q − p̂ on the student's logits (an unbiased estimate of q − p), with no NaN from the padded
slots in any kernel (eager, chunked, fused; the compiled one in test_sampled_compiled.py)."""

import numpy as np
import pytest
import torch

from distill.errors import DistillError
from distill.losses.divergences import chunked_logit_loss, forward_kl
from distill.losses.fused_linear import fused_linear_loss
from distill.teacher.outputs import SparseTeacher
from distill.teacher.sampled import PAD_LOGPROB, check_objective, count_dtype, draw, shard_generator, to_logprobs

V, N = 97, 16


def _teacher(n=24, seed=0, v=V):
    g = torch.Generator().manual_seed(seed)
    p_logits = torch.randn(n, v, generator=g) * 3
    p_logits[:, :5] = -float("inf")  # tokens of probability 0 are never drawn
    return torch.log_softmax(p_logits, -1)


def _sampled(log_p, samples=N, seed=0):
    counts, ids = draw(log_p, samples, shard_generator(seed, "train", 0))
    lp = torch.from_numpy(to_logprobs(counts.numpy().astype(count_dtype(samples)), samples))
    return SparseTeacher(lp, ids), counts


def _dense(sparse: SparseTeacher, v=V):
    return torch.zeros(*sparse.shape[:-1], v).scatter_(-1, sparse.indices, sparse.logprobs.exp())


def test_draws_are_seeded_distinct_and_sum_to_n():
    log_p = _teacher()
    counts, ids = draw(log_p, N, shard_generator(3, "train", 7))
    again, ids_again = draw(log_p, N, shard_generator(3, "train", 7))
    other, _ = draw(log_p, N, shard_generator(3, "train", 8))
    assert torch.equal(counts, again) and torch.equal(ids, ids_again)
    assert not torch.equal(counts, other)  # another shard draws its own tokens
    assert (counts.sum(-1) == N).all()
    assert (counts[:, :-1] >= counts[:, 1:]).all()  # most drawn first
    assert all(len(set(row.tolist())) == N for row in ids)  # padded slots are distinct ids too
    drawn = ids[counts > 0]
    assert (drawn >= 5).all()  # never a token of probability 0


def test_tally_by_hand():
    from distill.teacher.sampled import _tally

    counts, ids = _tally(torch.tensor([[5, 7, 5, 2], [1, 1, 1, 1]]), vocab=10)
    assert counts.tolist() == [[2, 1, 1, 0], [4, 0, 0, 0]]
    assert ids.tolist() == [[5, 2, 7, 0], [1, 0, 2, 3]]  # ties: smaller id first; pads: smallest undrawn ids
    counts, ids = _tally(torch.tensor([[0, 1, 2, 3]]), vocab=5)  # fewer than 2N ids in the vocabulary
    assert counts.tolist() == [[1, 1, 1, 1]] and ids.tolist() == [[0, 1, 2, 3]]


def test_the_empirical_distribution_is_unbiased():
    log_p = _teacher(n=4)
    g, mean, rounds = shard_generator(0, "val", 0), torch.zeros(4, V), 3000
    for _ in range(rounds):
        counts, ids = draw(log_p, N, g)
        mean.scatter_add_(-1, ids, counts / N)
    # each p̂(v) has standard deviation <= sqrt(p / (N · rounds)) <= 0.0023 here
    assert (mean / rounds - log_p.exp()).abs().max() < 0.012


def test_counts_read_back_as_log_probabilities_with_finite_padding():
    lp = to_logprobs(np.array([[3, 1, 0]], np.uint8), 4)
    assert np.allclose(np.exp(lp[0, :2]), [0.75, 0.25]) and lp[0, 2] == PAD_LOGPROB
    assert np.exp(np.float64(PAD_LOGPROB)) == 0.0
    assert count_dtype(255) == np.uint8 and count_dtype(256) == np.uint16


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_forward_kl_gradient_is_q_minus_p_hat(tail):
    """The whole mechanism: no new loss code, the cache's p̂ through the existing engine."""
    s = torch.randn(24, V) * 2
    sparse, _ = _sampled(_teacher())
    y = torch.randint(0, V, (24,))
    want = (s.softmax(-1) - _dense(sparse)) / len(s)
    for chunk in (5, 1000):
        x = s.clone().requires_grad_(True)
        loss, _ = chunked_logit_loss(x, sparse, y, weights={"forward_kl": 1.0}, tail=tail, chunk_size=chunk)
        (got,) = torch.autograd.grad(loss, x)
        assert (got - want).abs().max() < 1e-6  # the bucket's TAIL_EPS: 1e-6 of mass
    x = s.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(forward_kl(x, sparse, tail=tail), x)  # the plain specification
    assert (ref - want).abs().max() < 1e-6


def test_the_fused_head_loss_reads_a_sampled_teacher():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(2, 12, 16, generator=g), torch.randn(V, 16, generator=g) * 0.5
    y = torch.randint(0, V, (2, 12), generator=g)
    sparse, _ = _sampled(_teacher(24).view(2, 12, V))
    h.requires_grad_(True)
    kw = dict(weights={"forward_kl": 1.0, "ce": 0.5})
    loss, _ = fused_linear_loss(h, w, None, None, y, vocab_size=V, chunk_size=7, teacher_topk=sparse, **kw)
    (got,) = torch.autograd.grad(loss, h)
    x = (h @ w.t()).detach().requires_grad_(True)
    ref, _ = chunked_logit_loss(x, sparse, y, **kw)
    (gx,) = torch.autograd.grad(ref, x)
    assert torch.isfinite(got).all() and torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(got, gx @ w, atol=1e-5)


@pytest.mark.parametrize("term", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_no_nan_from_padded_slots_in_any_term(term, tail, temperature):
    """Padded slots (count 0) are finite: 0 · (−inf) never appears, even in the terms a run refuses."""
    s = torch.randn(24, V).requires_grad_(True)
    sparse, _ = _sampled(_teacher(), samples=32)
    y = torch.randint(0, V, (24,))
    loss, parts = chunked_logit_loss(s, sparse, y, weights={term: 1.0, "ce": 0.1}, tail=tail, temperature=temperature)
    (g,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values()) and torch.isfinite(g).all()


class _Objective:
    def __init__(self, weights, temperature=1.0, beta=0.5):
        self.weights, self.temperature, self.beta = weights, temperature, beta


def test_only_unbiased_objectives_read_a_sampled_cache():
    check_objective(_Objective({"forward_kl": 1.0, "ce": 0.5, "reverse_kl": 0.0}))
    check_objective(_Objective({"jsd": 1.0}, beta=0.0))  # beta = 0 is forward KL
    check_objective(_Objective({"ce": 1.0}, temperature=2.0))  # CE reads no teacher
    for weights, beta in (({"reverse_kl": 1.0}, 0.5), ({"jsd": 1.0}, 0.5), ({"tvd": 0.2}, 0.5)):
        with pytest.raises(DistillError, match=f"not {next(iter(weights))}") as e:
            check_objective(_Objective(weights, beta=beta))
        assert "\n" not in str(e.value)
    with pytest.raises(DistillError, match="loss.temperature=2 would re-temper"):
        check_objective(_Objective({"forward_kl": 1.0}, temperature=2.0))


@pytest.mark.slow  # compiles the bucket kernel (tens of seconds on CPU)
def test_the_compiled_bucket_kernel_on_a_sampled_teacher():
    from distill.losses import compiled as C
    from distill.losses.divergences import logit_chunk

    s, y = torch.randn(24, V) * 2, torch.randint(0, V, (24,))
    m = torch.ones(24, dtype=torch.bool)
    m[3] = False
    sparse, _ = _sampled(_teacher())
    coef = {"forward_kl": 0.7, "ce": 0.3}
    want, want_grad = logit_chunk(s, sparse, y, m, coef)
    got, got_grad = logit_chunk(s, sparse, y, m, coef, kernel=C.chunk_kernel)
    assert not C._failed, C._failed  # compiled, not the eager fallback
    assert torch.isfinite(got_grad).all() and all(torch.isfinite(v) for v in got.values())
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
    assert torch.allclose(got_grad, want_grad, atol=1e-6)
