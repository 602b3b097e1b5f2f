"""How close a student encoder is to its teacher, and how much faster: on held-out texts.

* ``mean_cosine``: mean cosine between the two models' embeddings of the same sentence;
* ``top_k_overlap``: for each query, the fraction of the teacher's k nearest neighbours (in a
  held-out corpus) that are also among the student's k nearest - what a search index would
  return differently if the student replaced the teacher;
* ``encode_throughput``: sentences per second of each model on the same batches, in the same
  process, after a warm-up, models alternating batch by batch (so load on the machine hits both alike).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.embedding.pooling import Pooling, encode
from distill.errors import DistillError


def mean_cosine(student_emb: Tensor, teacher_emb: Tensor) -> float:
    return F.cosine_similarity(student_emb.float(), teacher_emb.float(), dim=-1).mean().item()


def nearest(embeddings: Tensor, queries: int, k: int) -> Tensor:
    """Indices of the ``k`` nearest rows (cosine) to each of the first ``queries`` rows, among all
    rows but the query itself: ``[queries, k]``."""
    e = F.normalize(embeddings.float(), dim=-1)
    sims = e[:queries] @ e.T
    sims[torch.arange(queries), torch.arange(queries)] = float("-inf")  # a query is not its own neighbour
    return sims.topk(k, dim=-1).indices


def top_k_overlap(student_emb: Tensor, teacher_emb: Tensor, queries: int, k: int = 10) -> float:
    """Mean over the first ``queries`` rows of |teacher's top-k ∩ student's top-k| / k; the corpus
    searched is every held-out row (the query excluded)."""
    n = len(teacher_emb)
    if not 1 <= queries <= n or not 1 <= k < n:
        raise DistillError(f"retrieval overlap needs 1 <= queries <= {n} and 1 <= k < {n} texts (got {queries}, {k})")
    t, s = nearest(teacher_emb, queries, k), nearest(student_emb, queries, k)
    hits = (t.unsqueeze(-1) == s.unsqueeze(-2)).any(-1).sum(-1)  # per query: teacher neighbours the student found
    return (hits.float() / k).mean().item()


def encode_throughput(
    models: dict, batches: list, pooling: Pooling, rounds: int = 3, autocast_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Sentences per second of each model over ``batches``, after one warm-up batch each.

    The models take turns batch by batch (the order flipping each batch), so a burst of other
    load on the machine lands on both alike; each model's rate is its sentences over its summed
    time across ``rounds`` passes."""
    for model in models.values():
        encode(model, batches[:1], pooling, autocast_dtype)
    names = list(models)
    seconds = dict.fromkeys(names, 0.0)
    for r in range(rounds):
        for i, batch in enumerate(batches):
            for name in names if (r + i) % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                encode(models[name], [batch], pooling, autocast_dtype)
                seconds[name] += time.perf_counter() - start
    sentences = rounds * sum(len(ids) for ids, _ in batches)
    return {name: sentences / seconds[name] for name in names}


def agreement(student_emb: Tensor, teacher_emb: Tensor, queries: int, k: int) -> dict[str, float]:
    return {
        "embed_cosine": mean_cosine(student_emb, teacher_emb),
        f"top{k}_overlap": top_k_overlap(student_emb, teacher_emb, queries, k),
    }
