"""Speed and size of a causal LM on this machine: scoring throughput, generation latency, bytes on disk.

Every model is timed on the same inputs, after a warm-up pass (the first call pays for allocator
growth, kernel selection and lazy initialisation), so ratios between models are meaningful.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def size_on_disk(path: str | Path) -> int:
    """Bytes of the weight files in a model directory (safetensors, bin, ...); the whole directory
    when it holds none of those (configs and tokenizers are small and the same for every student)."""
    files = [f for f in Path(path).rglob("*") if f.is_file()]
    weights = [f for f in files if f.name.endswith(WEIGHT_SUFFIXES)]
    return sum(f.stat().st_size for f in (weights or files))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def scoring_throughput(
    model,
    batches: list[torch.Tensor],
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    warmup: int = 1,
) -> float:
    """Tokens per second of full forward passes (what perplexity scoring and a live teacher cost)
    over ``batches`` of input ids, after ``warmup`` untimed passes over the first batch."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    with _autocast(device, autocast_dtype):
        for _ in range(warmup):
            model(input_ids=batches[0].to(device), use_cache=False)
        _sync(device)
        start, tokens = time.perf_counter(), 0
        for ids in batches:
            model(input_ids=ids.to(device), use_cache=False)
            tokens += ids.numel()
        _sync(device)
        elapsed = time.perf_counter() - start
    model.train(was_training)
    return tokens / max(elapsed, 1e-9)


@torch.no_grad()
def _generate_seconds(
    model, ids: torch.Tensor, new_tokens: int, device: torch.device, autocast_dtype: torch.dtype | None
) -> float:
    with _autocast(device, autocast_dtype):
        _sync(device)
        start = time.perf_counter()
        # min_new_tokens: an early EOS must not make one model look faster than another
        model.generate(
            ids.to(device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=model.config.eos_token_id,
        )
        _sync(device)
        return time.perf_counter() - start


def generation_latency(
    model,
    prompts: list[torch.Tensor],
    new_tokens: int = 32,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Greedy decoding, batch 1, KV cache on: time to first token (prefill + one step) and the
    per-token cost of the later steps, ``(t(n) − t(1)) / (n − 1)``, median over ``prompts``.
    Returns ``ttft_ms``, ``ms_per_token`` and ``gen_tokens_per_s``."""
    device = torch.device(device)
    new_tokens = max(2, new_tokens)
    was_training = model.training
    model.eval()
    _generate_seconds(model, prompts[0], new_tokens, device, autocast_dtype)  # warm-up
    firsts, steps = [], []
    for ids in prompts:
        first = _generate_seconds(model, ids, 1, device, autocast_dtype)
        full = _generate_seconds(model, ids, new_tokens, device, autocast_dtype)
        firsts.append(first)
        steps.append(max(full - first, 0.0) / (new_tokens - 1))
    model.train(was_training)
    ttft, per_token = median(firsts), median(steps)
    return {
        "ttft_ms": 1e3 * ttft,
        "ms_per_token": 1e3 * per_token,
        "gen_tokens_per_s": 1.0 / per_token if per_token > 0 else float("inf"),
    }


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
