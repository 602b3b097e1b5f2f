"""teacher.read_top_k: a top-K cache read as a top-k cache (k <= K) is the live teacher's top-k,
so one distill-cache run serves a sweep over k."""

import pytest
import torch

from distill.errors import DistillError
from distill.teacher.cache import CachedTeacher, TeacherCache
from tests.teacher.tiny_cache import K, live_topk


def test_first_k_entries_are_the_live_top_k(built):
    model, blocks, cache_dir = built
    cache = TeacherCache(cache_dir)
    rows = torch.tensor([3, 0, 17])
    narrow = CachedTeacher(cache, read_top_k=3).outputs(rows)
    full = CachedTeacher(cache).outputs(rows)
    assert narrow.logprobs.shape[-1] == 3 and CachedTeacher(cache, read_top_k=3).top_k == 3
    assert torch.equal(narrow.indices, full.indices[..., :3])
    _, live = live_topk(model, blocks["train"][rows.numpy(), :-1], k=3)
    assert torch.equal(narrow.indices, live.indices)
    torch.testing.assert_close(narrow.logprobs, live.values, atol=2e-2, rtol=0)  # stored as float16
    with pytest.raises(DistillError, match="read_top_k must be between 1 and the cache's top_k"):
        CachedTeacher(cache, read_top_k=K + 1)
