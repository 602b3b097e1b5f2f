"""Where a model keeps its decoder (or encoder) blocks: one answer for pruning, LoRA and QLoRA."""

from __future__ import annotations

from torch import nn

from distill.errors import DistillError


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(dotted name, ModuleList)`` of the blocks: the first non-empty ModuleList of exactly
    ``config.num_hidden_layers`` entries (in module order, so a model's layer list wins over an
    MoE block's expert list of the same length), else the longest ModuleList."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(name, m) for name, m in model.named_modules() if name and isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise DistillError(f"cannot find the decoder blocks of {type(model).__name__} (no ModuleList of layers)")
    exact = [item for item in lists if len(item[1]) == n_layers]
    return exact[0] if exact else max(lists, key=lambda item: len(item[1]))
