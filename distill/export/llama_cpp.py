"""Running an exported GGUF file in llama.cpp itself (llama-cpp-python, the ``deploy`` extra): logits,
perplexity on distill's validation batches, greedy generation and speed, measured the way
``distill.eval.metrics.evaluate`` measures the PyTorch student, so the two numbers compare.

Same inputs, same targets: each validation row is evaluated from an empty KV cache, the NLL is summed
over its target positions (-100 = none), and the softmax covers the tokenizer's ``vocab_size`` ids
(the embedding's padding rows excluded, as ``evaluate`` slices them off).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from distill.errors import DistillError


def require():
    try:
        import llama_cpp
    except ImportError as err:
        raise DistillError(
            "llama.cpp is not installed: pip install 'distill[deploy]' (llama-cpp-python; compiles llama.cpp, "
            "about 20 minutes on 2 cores)"
        ) from err
    return llama_cpp


def load(path: str | Path, n_ctx: int, threads: int | None = None):
    """The GGUF in llama.cpp, logits for every position (``logits_all``), ``threads`` CPU threads."""
    llama_cpp = require()
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        seed=0,
        verbose=False,
    )


def logits(llm, tokens: Sequence[int]) -> np.ndarray:
    """(len(tokens), n_vocab) fp32 logits of one sequence, from an empty cache."""
    llm.reset()
    llm.eval([int(t) for t in tokens])
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def perplexity(llm, batches: Iterable, vocab_size: int) -> dict:
    """``{"val_ppl", "tokens"}`` over (inputs, targets, ...) batches of the validation loader."""
    nll, count = 0.0, 0
    for batch in batches:
        inputs, targets = np.asarray(batch[0]), np.asarray(batch[1])
        for row, target in zip(inputs, targets):
            logp = log_softmax(logits(llm, row)[:, :vocab_size])
            valid = target != -100
            nll -= float(logp[np.arange(len(row))[valid], target[valid]].sum())
            count += int(valid.sum())
    return {"val_ppl": math.exp(nll / max(count, 1)), "tokens": count}


def greedy(llm, prompt: Sequence[int], n: int) -> list[int]:
    """The first ``n`` greedy tokens after ``prompt`` (no sampling, no penalties)."""
    out = []
    llm.reset()
    for token in llm.generate([int(t) for t in prompt], top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def speed(llm, prompt: Sequence[int], n: int, rounds: int = 3) -> dict:
    """Median time to first token and generation tokens/s (after the first) over ``rounds``."""
    first, rates = [], []
    for _ in range(rounds):
        llm.reset()
        start = time.perf_counter()
        count = 0
        for _token in llm.generate([int(t) for t in prompt], top_k=1, temp=0.0, repeat_penalty=1.0):
            count += 1
            if count == 1:
                t_first = time.perf_counter()
            if count == n + 1:
                break
        end = time.perf_counter()
        first.append(t_first - start)
        rates.append(n / (end - t_first))
    return {"ttft_s": float(np.median(first)), "tokens_per_s": float(np.median(rates))}
