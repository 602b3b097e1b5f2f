"""Agreement metrics: mean cosine and top-k retrieval overlap, on hand-computable cases."""

from __future__ import annotations

import pytest
import torch

from distill.embedding.metrics import mean_cosine, nearest, top_k_overlap
from distill.errors import DistillError

# Five points on a line of angles: neighbours by cosine are the adjacent angles.
ANGLES = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0])
TEACHER = torch.stack([ANGLES.cos(), ANGLES.sin()], dim=-1)


def test_nearest_excludes_the_query_itself():
    assert nearest(TEACHER, queries=2, k=2).tolist() == [[1, 2], [0, 2]]


def test_identical_embeddings_agree_fully():
    assert top_k_overlap(TEACHER, TEACHER, queries=5, k=2) == pytest.approx(1.0)
    assert mean_cosine(TEACHER * 3, TEACHER) == pytest.approx(1.0)


def test_overlap_by_hand():
    # Student: point 2 moved next to point 4. Teacher top-2 of query 0: {1, 2}; student: {1, 3}
    # -> 1/2. Query 1: teacher {0, 2} (0.1 and 0.2 away), student {0, 3} -> 1/2.
    student = TEACHER.clone()
    student[2] = torch.tensor([torch.tensor(0.95).cos(), torch.tensor(0.95).sin()])
    assert nearest(student, 2, 2).tolist() == [[1, 3], [0, 3]]
    assert top_k_overlap(student, TEACHER, queries=2, k=2) == pytest.approx(0.5)
    assert mean_cosine(student, TEACHER) == pytest.approx((4 + torch.tensor(0.65).cos().item()) / 5)


def test_overlap_checks_its_sizes():
    with pytest.raises(DistillError, match="queries"):
        top_k_overlap(TEACHER, TEACHER, queries=2, k=5)


def test_encode_throughput_times_every_model_on_the_same_batches():
    from distill.embedding.metrics import encode_throughput
    from distill.embedding.pooling import Pooling
    from tests.embedding.tiny import tiny_bert

    calls = {"big": 0, "small": 0}
    models = {"big": tiny_bert(layers=4), "small": tiny_bert(layers=1)}
    for name, model in models.items():
        model.register_forward_hook(lambda m, a, o, name=name: calls.__setitem__(name, calls[name] + 1))
    batches = [(torch.randint(1, 100, (4, 8)), torch.ones(4, 8, dtype=torch.long)) for _ in range(3)]
    rates = encode_throughput(models, batches, Pooling(), rounds=2)
    assert set(rates) == {"big", "small"} and all(r > 0 for r in rates.values())
    assert calls == {"big": 1 + 2 * 3, "small": 1 + 2 * 3}  # one warm-up batch, then every batch each round
