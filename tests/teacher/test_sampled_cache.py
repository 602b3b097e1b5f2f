"""Writing and reading a sampled teacher cache (``teacher.cache_mode=sample``) with the tiny teacher:
seeded, resumable like the top-k cache, read back as the empirical distribution, and refused in one
line where a top-k cache is expected."""

import json

import numpy as np
import pytest
import torch

from distill.errors import DistillError
from distill.teacher.cache import CachedTeacher, TeacherCache
from distill.teacher.cache_manifest import shard_paths
from tests.teacher.tiny_cache import SEQ, VOCAB, live_topk, write_cache

S = 8  # draws per token


@pytest.fixture(scope="module")
def sampled(built, tmp_path_factory):
    model, blocks, _ = built
    return write_cache(model, blocks, tmp_path_factory.mktemp("scache") / "c", cache_mode="sample", samples=S)


def _files(cache_dir):
    return [p.read_bytes() for s in range(3) for p in shard_paths(cache_dir, "train", s)]


def test_manifest_and_storage(sampled):
    m = json.loads((sampled / "manifest.json").read_text())
    assert (m["format_version"], m["cache_mode"], m["samples"], m["top_k"]) == (3, "sample", S, S)
    assert (m["value_dtype"], m["index_dtype"], m["sample_seed"]) == ("uint8", "uint16", 0)
    assert 3 * S <= m["bytes_per_token"] < 3 * S + 2  # measured: counts + ids, plus the .npy headers (tiny shards)
    cache = TeacherCache(sampled)
    assert cache.sampled and cache.bytes_per_token == m["bytes_per_token"] == m["measured_bytes_per_token"]
    counts = np.load(shard_paths(sampled, "train", 0)[0])
    assert counts.dtype == np.uint8 and (counts.sum(-1) == S).all()


def test_read_back_as_the_empirical_distribution_of_the_tempered_teacher(built, sampled):
    model, blocks, _ = built
    out = TeacherCache(sampled).lookup(np.arange(40))
    assert out.shape == (40, SEQ, S) and torch.isfinite(out.logprobs).all()
    assert torch.allclose(out.logprobs.exp().sum(-1), torch.ones(40, SEQ))
    assert all(len(set(row.tolist())) == S for row in out.indices.view(-1, S))  # distinct slots
    # E[Σ p̂ log p_T] = Σ p_T log p_T: the draws come from the teacher at the cache temperature
    log_p, _ = live_topk(model, blocks["train"][:, :-1])
    cross = (out.logprobs.exp() * log_p.gather(-1, out.indices)).sum(-1).mean()
    entropy = (log_p.exp() * log_p).sum(-1).mean()
    assert abs(cross / entropy - 1) < 0.05, (cross, entropy)


def test_same_seed_same_cache_other_seed_other_cache(built, sampled, tmp_path):
    model, blocks, _ = built
    again = write_cache(model, blocks, tmp_path / "again", cache_mode="sample", samples=S, micro_batch=3)
    assert _files(again) == _files(sampled)  # micro-batching does not change the draws
    other = write_cache(model, blocks, tmp_path / "other", cache_mode="sample", samples=S, sample_seed=1)
    assert _files(other) != _files(sampled)
    with pytest.raises(DistillError, match="sample_seed 1 there, 2 now"):
        write_cache(model, blocks, tmp_path / "other", cache_mode="sample", samples=S, sample_seed=2)


def test_one_line_refusals(built, sampled, tmp_path):
    model, blocks, _ = built
    cases = [
        (lambda: CachedTeacher(TeacherCache(sampled), read_top_k=4), "sampled tokens per position"),
        (lambda: write_cache(model, blocks, tmp_path / "x", cache_mode="sample", cache_format="compact"), "top-k"),
        (lambda: write_cache(model, blocks, tmp_path / "y", cache_mode="samples"), "teacher.cache_mode must"),
        (lambda: write_cache(model, blocks, tmp_path / "z", cache_mode="sample", samples=VOCAB + 1), "samples"),
    ]
    for make, match in cases:
        with pytest.raises(DistillError, match=match) as e:
            make()
        assert "\n" not in str(e.value)
    assert CachedTeacher(TeacherCache(sampled), read_top_k=S).top_k == S


class _Objective:
    weights, temperature, beta = {"reverse_kl": 1.0}, 1.0, 0.5


def test_training_refuses_a_biased_objective_on_a_sampled_cache(sampled):
    teacher = CachedTeacher(TeacherCache(sampled))
    ids, rows = torch.zeros(2, SEQ, dtype=torch.long), torch.tensor([0, 1])
    with pytest.raises(DistillError, match="sampled tokens .* not reverse_kl"):
        teacher.scores(ids, rows, _Objective(), VOCAB)
    _Objective.weights = {"forward_kl": 1.0, "ce": 1.0}
    out = teacher.scores(ids, rows, _Objective(), VOCAB)
    assert out.logits.shape == (2, SEQ, S)
