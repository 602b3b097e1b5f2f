"""Validation perplexity of several models and their top-1 agreement with a reference, in one pass."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate(
    models: dict[str, torch.nn.Module],
    loader: DataLoader,
    vocab_size: int,
    reference: str = "teacher",
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, dict[str, float]]:
    """Returns ``{name: {"val_ppl": ..., "top1_agreement": ...}}``; agreement is against ``reference``."""
    nll = {name: 0.0 for name in models}
    agree = {name: 0 for name in models}
    count = 0
    was_training = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    device = torch.device(device)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    for batch in loader:
        inputs, targets = batch[0].to(device), batch[1].to(device)
        with amp:
            logits = {n: m(input_ids=inputs, use_cache=False).logits[..., :vocab_size].float() for n, m in models.items()}
        ref_top1 = logits[reference].argmax(-1) if reference in logits else None
        for name, lg in logits.items():
            nll[name] += F.cross_entropy(lg.flatten(0, 1), targets.flatten(), reduction="sum").item()
            if ref_top1 is not None:
                agree[name] += (lg.argmax(-1) == ref_top1).sum().item()
        count += targets.numel()
    for name, m in models.items():
        m.train(was_training[name])
    out = {}
    for name in models:
        out[name] = {"val_ppl": math.exp(nll[name] / count)}
        if reference in models and name != reference:
            out[name]["top1_agreement"] = agree[name] / count
    return out
