"""The architectures whose weights the pruning methods know how to slice.

Depth, width and sparsity pruning touch named sub-modules (attention projections, MLP
channels, norms); these are the families whose layouts are known and tested. Anything
else gets one clear line instead of a silently wrong model.
"""

from __future__ import annotations

from torch import nn

from distill.errors import DistillError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2")


def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", type(model).__name__)


def check_supported(model: nn.Module, what: str = "pruning") -> str:
    kind = model_type(model)
    if kind not in SUPPORTED:
        raise DistillError(f"{what} supports {', '.join(SUPPORTED)}; the teacher is {kind!r}")
    return kind
