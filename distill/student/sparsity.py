"""Sparse students: the teacher's weights with a fixed fraction zeroed, by Wanda or by magnitude.

Which weights: every linear layer inside the decoder blocks (attention and MLP projections;
not the embeddings, not ``lm_head``). GPT-2's ``Conv1D`` stores its weight as ``[in, out]``;
everything here works on the ``[out, in]`` view, so "row" always means one output unit and
"group" always means consecutive *input* weights of one row.

Scores (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"):

* ``wanda``: ``|W_ij| * ||X_j||_2``, the weight's magnitude times the L2 norm of its input
  feature over the calibration tokens.
* ``magnitude``: ``|W_ij|``. Compared per output row like Wanda (the paper's own magnitude
  baseline compares per layer, which is weaker; per row keeps the two methods' only
  difference the activation term, so "Wanda <= magnitude" is the stricter claim).

Patterns (``sparsity``):

* a fraction ``s`` (unstructured): every row keeps its best ``in - int(s * in)`` weights
  (Wanda's code prunes ``int(s * in)`` per row);
* ``"N:M"`` (semi-structured, e.g. ``"2:4"`` for sparse tensor cores): in every group of M
  consecutive input weights of a row, the N best are kept (N non-zeros per M).

Calibration (Wanda only): ``calibration_samples`` blocks of the training data, drawn with
``seed``. With ``sequential=True`` (the default, as in the paper's code) the decoder blocks are
pruned one at a time and block ``i``'s input norms are measured with blocks ``0..i-1`` already
pruned -- here by re-running the model from the embeddings and stopping after block ``i``
(architecture-agnostic, at the price of ~L/2 full forwards over the calibration set). Within
a block, all its linears see the block's dense inputs, as in the paper. ``sequential=False``
measures every layer's norms in one pass of the dense model (faster; slightly less faithful).

Fixed masks: each pruned weight gets a ``torch.nn.utils.parametrize`` parametrization
``w -> w * mask`` (``mask`` a bool buffer). The optimizer updates the underlying weight
(``parametrizations.weight.original``), the forward always sees the masked one, so the
sparsity survives distillation; gradients reach the kept weights only. The state dict holds
``...parametrizations.weight.original`` and ``...parametrizations.weight.0.mask`` (Lightning
checkpoints resume as long as the student is rebuilt the same way). Call :func:`bake_masks`
before ``save_pretrained``: it removes the parametrizations, leaving plain weights holding
the zeros, under the usual parameter names.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from distill.errors import DistillError
from distill.student.calibration import calibration_batches, forward_hooks
from distill.student.prune import decoder_layers_name, every_other_layer
from distill.student.support import check_supported

log = logging.getLogger(__name__)

METHODS = ("wanda", "magnitude")
Pattern = float | tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Patterns


def parse_sparsity(value) -> Pattern:
    """``0.5`` / ``"0.5"`` -> 0.5 (fraction zeroed); ``"2:4"`` -> ``(2, 4)`` (N kept per M)."""
    bad = f"sparsity must be a fraction in (0, 1) or 'N:M' with 0 < N < M (e.g. '2:4'), got {value!r}"
    if isinstance(value, bool):
        raise DistillError(bad)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = f"{value[0]}:{value[1]}"
    if isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text)
        if m:
            n, mm = int(m.group(1)), int(m.group(2))
            if not 0 < n < mm:
                raise DistillError(bad)
            return n, mm
        try:
            value = float(text)
        except ValueError:
            raise DistillError(bad) from None
    if isinstance(value, (int, float)):
        s = float(value)
        if 0.0 < s < 1.0:
            return s
        if isinstance(value, int) and value >= 60:  # YAML 1.1 reads an unquoted 2:4 as 2*60+4 = 124
            raise DistillError(
                bad + f" -- quote N:M in YAML (sparsity: '2:4'); unquoted, 2:4 is read as the base-60 number {value}"
            )
        raise DistillError(bad)
    raise DistillError(bad)


def format_sparsity(pattern: Pattern) -> str:
    return f"{pattern[0]}:{pattern[1]}" if isinstance(pattern, tuple) else f"{pattern:g}"


def pattern_fraction(pattern: Pattern) -> float:
    """The nominal fraction of weights zeroed."""
    return (pattern[1] - pattern[0]) / pattern[1] if isinstance(pattern, tuple) else float(pattern)


# ---------------------------------------------------------------------------------------------
# Layers and masks


def target_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(full name, module)`` of every linear (``nn.Linear`` or GPT-2 ``Conv1D``) in the decoder blocks."""
    prefix = decoder_layers_name(model)
    layers = model.get_submodule(prefix)
    return [(f"{prefix}.{name}", m) for name, m in layers.named_modules() if isinstance(m, (nn.Linear, Conv1D))]


def _block_linears(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.modules() if isinstance(m, (nn.Linear, Conv1D))]


def rows_view(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight as ``[out, in]`` (``Conv1D`` stores ``[in, out]``)."""
    return weight.t() if isinstance(module, Conv1D) else weight


def mask_from_scores(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Bool keep-mask ``[out, in]`` from scores ``[out, in]`` (higher = more important)."""
    out_f, in_f = scores.shape
    keep = torch.ones_like(scores, dtype=torch.bool)
    if isinstance(pattern, tuple):
        n, m = pattern
        if in_f % m:
            raise DistillError(f"{n}:{m} sparsity needs input sizes divisible by {m}; a layer has {in_f} inputs")
        groups = scores.reshape(out_f, in_f // m, m)
        drop = torch.topk(groups, m - n, dim=-1, largest=False).indices
        keep = keep.reshape(out_f, in_f // m, m).scatter_(-1, drop, False).reshape(out_f, in_f)
    else:
        k = int(in_f * pattern)
        if k:
            drop = torch.topk(scores, k, dim=1, largest=False).indices
            keep.scatter_(1, drop, False)
    return keep


class _Mask(nn.Module):
    """Parametrization ``w -> w * mask``: a fixed sparsity pattern the optimizer cannot undo."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def apply_mask(module: nn.Module, keep_rows: torch.Tensor) -> None:
    """Zero the pruned weights and register the fixed mask (``keep_rows`` in ``[out, in]`` layout)."""
    mask = rows_view(module, keep_rows).contiguous().to(module.weight.device)
    if parametrize.is_parametrized(module, "weight"):
        raise DistillError(f"{type(module).__name__} already has a parametrized weight; cannot prune it twice")
    with torch.no_grad():
        module.weight.mul_(mask)
    parametrize.register_parametrization(module, "weight", _Mask(mask))


def masked_modules(model: nn.Module) -> Iterator[nn.Module]:
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, _Mask) for p in module.parametrizations["weight"]
        ):
            yield module


def bake_masks(model: nn.Module) -> nn.Module:
    """Remove the mask parametrizations in place, leaving plain ``weight`` parameters that hold the
    zeros (same Parameter objects, so an optimizer's references stay valid). Call before
    ``save_pretrained``. Training after baking no longer keeps the zeros."""
    for module in list(masked_modules(model)):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


# ---------------------------------------------------------------------------------------------
# Verification


@torch.no_grad()
def verify_sparsity(model: nn.Module, pattern) -> dict:
    """Measure the zeros of every decoder-block linear and check the pattern holds.

    Unstructured ``s``: every row has at least ``int(s * in)`` zeros. ``N:M``: every group of M
    consecutive input weights has at most N non-zeros. Works on the effective weights (masked
    or baked). Returns ``{"pattern", "layers": {name: fraction zero}, "overall", "params",
    "nonzero"}``; raises :class:`DistillError` naming the violating layers.
    """
    pattern = parse_sparsity(pattern)
    layers, violations, total, nonzero = {}, [], 0, 0
    for name, module in target_linears(model):
        w = rows_view(module, module.weight)
        zero = w == 0
        out_f, in_f = w.shape
        layers[name] = zero.float().mean().item()
        total += w.numel()
        nonzero += int((~zero).sum())
        if isinstance(pattern, tuple):
            n, m = pattern
            if in_f % m:
                violations.append(f"{name} ({in_f} inputs, not divisible by {m})")
                continue
            bad = int(((~zero).reshape(out_f, in_f // m, m).sum(-1) > n).sum())
            if bad:
                violations.append(f"{name} ({bad} groups of {m} with more than {n} non-zeros)")
        else:
            need = int(in_f * pattern)
            bad = int((zero.sum(1) < need).sum())
            if bad:
                violations.append(f"{name} ({bad} rows with fewer than {need}/{in_f} zeros)")
    if not layers:
        raise DistillError(f"{type(model).__name__} has no linear layers in its decoder blocks to check")
    report = {
        "pattern": format_sparsity(pattern),
        "layers": layers,
        "overall": 1.0 - nonzero / total,
        "params": total,
        "nonzero": nonzero,
    }
    if violations:
        more = f" and {len(violations) - 3} more" if len(violations) > 3 else ""
        raise DistillError(f"sparsity pattern {report['pattern']} violated: {'; '.join(violations[:3])}{more}")
    return report


# ---------------------------------------------------------------------------------------------
# Calibration


class _Stop(Exception):
    pass


def _raise_stop(*_):
    raise _Stop


@torch.no_grad()
def input_norms(
    model: nn.Module, modules: Iterable[nn.Module], batches: list[torch.Tensor], stop_after: nn.Module | None = None
) -> dict[nn.Module, torch.Tensor]:
    """``||X_j||_2`` over all calibration tokens, per input feature of each module (float32).
    With ``stop_after``, each forward is cut short once that module has run."""
    modules = list(modules)
    sums: dict[nn.Module, torch.Tensor] = {}

    def hook(module, args, kwargs, output):
        x = (args[0] if args else kwargs["input"]).detach().float()
        sq = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        sums[module] = sums[module] + sq if module in sums else sq

    hooks = {m: hook for m in modules}
    if stop_after is not None:
        hooks[stop_after] = _raise_stop
    device = next(model.parameters()).device
    with forward_hooks(hooks):
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                pass
    missing = [m for m in modules if m not in sums]
    if missing:
        raise DistillError(f"calibration never reached {len(missing)} of the layers to prune")
    return {m: s.sqrt() for m, s in sums.items()}


def _scores(module: nn.Module, norms: torch.Tensor | None) -> torch.Tensor:
    w = rows_view(module, module.weight.detach()).abs().float()
    return w if norms is None else w * norms.to(w.device)[None, :]


# ---------------------------------------------------------------------------------------------
# The builder


def sparse_student(
    teacher: PreTrainedModel,
    vocab_size: int | None = None,
    train_blocks: np.ndarray | None = None,
    *,
    method: str = "wanda",
    sparsity=0.5,
    calibration_samples: int = 64,
    calibration_batch_size: int = 8,
    sequential: bool = True,
    seed: int = 0,
    base: str | None = None,
    device: str | None = None,
) -> PreTrainedModel:
    """A copy of the teacher (or of ``every_other_layer(teacher)`` with ``base=every_other_layer``)
    with the decoder-block linears pruned to ``sparsity`` by ``method`` and the masks fixed.

    ``device``: where calibration and scoring run (``None``: CUDA when available, else the
    teacher's device); the student is returned on the teacher's device.
    """
    if teacher is None:
        raise DistillError("a sparse student is pruned from the teacher's weights: it needs a teacher model")
    check_supported(teacher, "sparsity pruning")
    if method not in METHODS:
        raise DistillError(f"sparsity method must be one of {', '.join(METHODS)}, got {method!r}")
    pattern = parse_sparsity(sparsity)
    if method == "wanda" and train_blocks is None:
        raise DistillError("Wanda pruning needs calibration data (train_blocks); none was given")

    if base is None:
        student = copy.deepcopy(teacher)
    elif base == "every_other_layer":
        student = every_other_layer(teacher)
    else:
        raise DistillError(f"student.base must be null or every_other_layer, got {base!r}")
    home = next(teacher.parameters()).device
    work = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else home)
    was_training = student.training
    student.to(work).eval()

    blocks = student.get_submodule(decoder_layers_name(student))
    batches = (
        calibration_batches(train_blocks, calibration_samples, calibration_batch_size, seed)
        if method == "wanda"
        else []
    )
    norms: dict[nn.Module, torch.Tensor] = {}
    if method == "wanda" and not sequential:
        norms = input_norms(student, [m for b in blocks for m in _block_linears(b)], batches)
    for block in blocks:
        linears = _block_linears(block)
        if method == "wanda" and sequential:
            norms = input_norms(student, linears, batches, stop_after=block)
        for module in linears:
            apply_mask(module, mask_from_scores(_scores(module, norms.get(module)), pattern))
    student.to(home).train(was_training)

    checked = verify_sparsity(student, pattern)
    params_before = checked["params"]
    student.pruning_report = {
        "method": method,
        "sparsity": format_sparsity(pattern),
        "layers": checked["layers"],
        "params_before": params_before,
        "nonzero_after": checked["nonzero"],
        "overall": checked["overall"],
        "calibration_samples": sum(len(b) for b in batches),
        "sequential": bool(sequential and method == "wanda"),
    }
    log.info(
        "%s pruning to %s: %d of %d decoder-block weights kept (%.1f%% zero)",
        method,
        format_sparsity(pattern),
        checked["nonzero"],
        params_before,
        100 * checked["overall"],
    )
    return student
