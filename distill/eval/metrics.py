"""Validation perplexity of several models, their calibration and their top-1 agreement with a reference, in
one pass."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distill.eval.calibration import ece, top1_bin_sums


def num_params(model: torch.nn.Module) -> int:
    """Parameters as the model defines them: a bitsandbytes 4-bit weight counts its unpacked shape
    (its storage holds two values per uint8 element)."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None and hasattr(state, "shape") else p.numel()
    return total


@torch.no_grad()
def evaluate(
    models: dict[str, torch.nn.Module],
    loader: DataLoader,
    vocab_size: int,
    reference: str = "teacher",
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    reference_top1: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Returns ``{name: {"val_ppl", "ece", "top1_agreement", "kl_to_teacher", "tokens"}}`` over target
    tokens (-100 = not a target). ``ece``: the expected calibration error of the model's top-1
    next-token probability (``distill.eval.calibration``, 15 bins).

    Agreement is against model ``reference``, or against ``reference_top1(row_index)`` (the
    stored top-1 of a cached teacher) when given. ``kl_to_teacher`` is KL(reference || model) in
    nats per target token at temperature 1, only when the reference model itself is evaluated.
    """
    nll = {name: 0.0 for name in models}
    agree = {name: 0 for name in models}
    kl = {name: 0.0 for name in models}
    calibration = {name: 0 for name in models}
    count = 0
    was_training = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    device = torch.device(device)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    for batch in loader:
        inputs, targets = batch[0].to(device), batch[1].to(device)
        valid = targets != -100
        with amp:
            logits = {
                n: m(input_ids=inputs, use_cache=False).logits[..., :vocab_size].float() for n, m in models.items()
            }
        if reference_top1 is not None:
            ref_top1 = reference_top1(batch[2]).to(device)
        else:
            ref_top1 = logits[reference].argmax(-1) if reference in logits else None
        ref_logp = logits[reference][valid].log_softmax(-1) if reference in logits else None
        for name, lg in logits.items():
            nll[name] += F.cross_entropy(lg.flatten(0, 1), targets.flatten(), reduction="sum", ignore_index=-100).item()
            calibration[name] = calibration[name] + top1_bin_sums(lg, targets, valid)
            if ref_top1 is not None:
                agree[name] += ((lg.argmax(-1) == ref_top1) & valid).sum().item()
            if ref_logp is not None and name != reference:
                kl[name] += F.kl_div(lg[valid].log_softmax(-1), ref_logp, log_target=True, reduction="sum").item()
        count += int(valid.sum())
    for name, m in models.items():
        m.train(was_training[name])
    has_reference = reference_top1 is not None or reference in models
    out = {}
    for name in models:
        out[name] = {"val_ppl": math.exp(nll[name] / max(1, count)), "tokens": count}
        out[name]["ece"] = ece(calibration[name]) if count else 0.0
        if has_reference and name != reference:
            out[name]["top1_agreement"] = agree[name] / max(1, count)
        if reference in models and name != reference:
            out[name]["kl_to_teacher"] = kl[name] / max(1, count)
    return out
