"""The architectures whose weights the pruning methods know how to slice.

Depth, width and sparsity pruning touch named sub-modules (attention projections, MLP
channels, norms); these are the families whose layouts are known and tested. Anything
else gets one clear line instead of a silently wrong model.

A builder given a weightless teacher (parameters on the meta device: ``plan=true``, the real-shape
tests) builds its student weightless too, with the same shapes: nothing is measured (every block
and channel scores alike, so the first ones are kept) and nothing is allocated.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from distill.errors import DistillError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2")


def weightless(model: nn.Module) -> bool:
    """Whether ``model`` holds shapes only (its parameters on the meta device)."""
    p = next(model.parameters(), None)
    return p is not None and p.is_meta


def built_like(model: nn.Module):
    """Where a builder creates a model it fills from ``model``: on the meta device for a weightless one."""
    return torch.device("meta") if weightless(model) else contextlib.nullcontext()


def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def check_supported(model: nn.Module, what: str = "pruning") -> str:
    kind = model_type(model)
    if kind not in SUPPORTED:
        raise DistillError(f"{what} supports {', '.join(SUPPORTED)}; the teacher is {kind!r}")
    return kind
