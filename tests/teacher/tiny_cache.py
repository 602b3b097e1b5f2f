"""A tiny random teacher, random token blocks, and the top-k cache written from them: the sizes are
chosen so the cache has several shards (40 train rows of 16 per shard) and a short tail."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from distill.student.scratch import build_llama
from distill.teacher.cache_writer import write_teacher_cache

VOCAB, SEQ, K, T, SHARD = 300, 16, 8, 2.0, 16
KEYS = {"teacher_key": "t1", "tokenizer_key": "tok1", "data_key": "d1"}


def tiny_teacher(vocab: int = VOCAB) -> nn.Module:
    torch.manual_seed(0)
    return build_llama(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2, max_seq_len=SEQ).eval()


def random_blocks(vocab: int = VOCAB) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train": rng.integers(0, vocab, (40, SEQ + 1)).astype(np.uint16),
        "val": rng.integers(0, vocab, (6, SEQ + 1)).astype(np.uint16),
    }


def write_cache(model, blocks, cache_dir, **kw):
    """write_teacher_cache at these sizes; keyword arguments override its settings."""
    args = {
        "vocab_size": VOCAB,
        "keys": KEYS,
        "top_k": K,
        "temperature": T,
        "shard_rows": SHARD,
        "micro_batch": 5,
        "trainer_kwargs": {"accelerator": "cpu"},
        "progress_bar": False,
    }
    return write_teacher_cache(model, blocks, cache_dir, **{**args, **kw})


def live_topk(model, inputs: np.ndarray, vocab: int = VOCAB, k: int = K):
    """The live teacher's log-probabilities at temperature T, and their top-k: what the cache must hold."""
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(inputs.astype(np.int64))).logits[..., :vocab].float()
    lp = torch.log_softmax(logits / T, dim=-1)
    return lp, lp.topk(k, dim=-1)
