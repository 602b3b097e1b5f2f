"""Depth pruning by block importance (ShortGPT's Block Influence, Minitron's depth pruning).

A block whose output hidden state points the same way as its input barely changes the
residual stream; removing it changes the model least. Importance of block i is
``1 - cos(input_i, output_i)``, averaged over the tokens of a calibration set drawn
from the training data; the least important blocks are dropped and the rest are kept
in their original order (weights copied by :func:`distill.student.prune.keep_layers`).
"""

from __future__ import annotations

import logging

import numpy as np
from torch import Tensor, nn
from transformers import PreTrainedModel

from distill.errors import DistillError
from distill.student.calibration import calibration_batches, capture_block_io, decoder_layers
from distill.student.prune import keep_layers
from distill.student.support import check_supported, weightless

log = logging.getLogger(__name__)


def block_importance(model: nn.Module, batches: list[Tensor]) -> list[float]:
    """Per decoder block, ``1 - mean cos(block input, block output)`` over all calibration tokens."""
    return [1.0 - c for c in capture_block_io(model, batches)]


def count_params(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings count once)."""
    return sum(p.numel() for p in model.parameters())


def _layer_params(model: nn.Module) -> tuple[int, list[int]]:
    """(parameters outside the decoder blocks, parameters of each block): a pruned model has
    the first plus the kept blocks' share."""
    layer_counts = [count_params(layer) for layer in decoder_layers(model)]
    return count_params(model) - sum(layer_counts), layer_counts


def most_important(importance: list[float], k: int) -> list[int]:
    """Indices of the ``k`` most important blocks, in original order (ties keep the earlier block)."""
    ranked = sorted(range(len(importance)), key=lambda i: (-importance[i], i))
    return sorted(ranked[:k])


def depth_pruned(
    teacher: PreTrainedModel | None,
    vocab_size: int | None = None,
    train_blocks: np.ndarray | None = None,
    *,
    num_layers: int | None = None,
    target_params: int | None = None,
    calibration_samples: int = 64,
    calibration_batch_size: int = 8,
    seed: int = 0,
) -> PreTrainedModel:
    """The teacher with its least important decoder blocks removed.

    Give at most one of

    * ``num_layers``: keep this many blocks (1 .. the teacher's depth);
    * ``target_params``: keep the most blocks whose student has at most this many
      parameters (counted exactly: embeddings, head, norms plus the kept blocks);

    with neither, half the teacher's blocks are kept (rounded down, at least 1).
    Importance is measured on ``calibration_samples`` rows of ``train_blocks`` chosen
    with ``seed``. ``vocab_size`` is unused: the student keeps the teacher's embeddings.
    The returned model carries ``pruning_report`` (method, importance, kept layers,
    parameters before and after).
    """
    if teacher is None:
        raise DistillError("depth pruning builds the student from the teacher, but no teacher is configured")
    check_supported(teacher, "depth pruning")
    n = teacher.config.num_hidden_layers
    outside, per_layer = _layer_params(teacher)
    if num_layers is not None and target_params is not None:
        raise DistillError("depth pruning takes num_layers or target_params, not both")
    if num_layers is not None and not 1 <= num_layers <= n:
        raise DistillError(
            f"depth pruning: num_layers must be between 1 and the teacher's {n} layers, got {num_layers}"
        )
    if target_params is not None and outside + min(per_layer) > target_params:
        raise DistillError(
            f"depth pruning cannot reach target_params={target_params:,}: even one layer gives "
            f"{outside + min(per_layer):,} parameters (embeddings and norms alone are {outside:,})"
        )

    if weightless(teacher):  # shapes only (plan=true): every block scores alike, the first ones are kept
        importance = [0.0] * n
    else:
        batches = calibration_batches(train_blocks, calibration_samples, calibration_batch_size, seed)
        vocab = teacher.get_input_embeddings().num_embeddings
        if max(int(b.max()) for b in batches) >= vocab:
            raise DistillError(f"calibration token ids exceed the teacher's vocabulary of {vocab}: wrong tokenizer?")
        importance = block_importance(teacher, batches)

    if target_params is not None:
        fits = [
            k
            for k in range(n, 0, -1)
            if outside + sum(per_layer[i] for i in most_important(importance, k)) <= target_params
        ]
        if not fits:  # only with blocks of unequal size: the most important one alone is too big
            raise DistillError(
                f"depth pruning cannot reach target_params={target_params:,} with the most important layer"
            )
        k = fits[0]
    else:
        k = num_layers if num_layers is not None else max(1, n // 2)
    kept = most_important(importance, k)

    student = keep_layers(teacher, kept)
    report = {
        "method": "depth",
        "importance": importance,
        "kept_layers": kept,
        "params_before": count_params(teacher),
        "params_after": count_params(student),
    }
    if not weightless(teacher):  # a weightless teacher measured nothing
        scores = ", ".join(f"{i}:{v:.4f}" for i, v in enumerate(importance))
        log.info("depth pruning: block importance (1 - cos) %s", scores)
    log.info(
        "depth pruning: keeping %d of %d layers %s (%s -> %s parameters)",
        k,
        n,
        kept,
        f"{report['params_before']:,}",
        f"{report['params_after']:,}",
    )
    student.pruning_report = report
    return student
