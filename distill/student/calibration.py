"""Calibration: a few training blocks run through a model to measure its blocks.

Pruning methods estimate importance from activations on a small calibration set drawn
from the training data. This module holds the generic parts they share:

* :func:`calibration_batches` - a seeded random subset of the packed training rows;
* :func:`decoder_layers` - the model's decoder blocks;
* :func:`forward_hooks` - forward hooks that are removed on exit, even on error;
* :func:`run_calibration` - the batches through the model, no grad, eval mode;
* :func:`capture_block_io` - a per-token statistic of each block's (input, output)
  hidden states, averaged over all calibration tokens (depth pruning uses the cosine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.student.prune import decoder_layers_name

# hook(module, args, kwargs, output): the signature of ``register_forward_hook(..., with_kwargs=True)``.
Hook = Callable[[nn.Module, tuple, dict, Any], Any]


def calibration_batches(
    train_blocks: np.ndarray | None, samples: int = 64, batch_size: int = 8, seed: int = 0
) -> list[Tensor]:
    """Up to ``samples`` random rows of the packed ``[n, seq_len + 1]`` training data.

    Returns the rows' inputs (``[:, :-1]``) as int64 tensors of at most ``batch_size``
    rows each. The same ``seed`` gives the same rows; fewer rows than ``samples`` are all used.
    """
    if train_blocks is None or len(train_blocks) == 0:
        raise DistillError("pruning needs calibration data, but there are no training blocks")
    blocks = np.asarray(train_blocks)
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise DistillError(f"training blocks must be a [n, seq_len + 1] array, got shape {blocks.shape}")
    if samples < 1 or batch_size < 1:
        raise DistillError(f"calibration samples and batch size must be >= 1 (got {samples}, {batch_size})")
    rows = np.random.default_rng(seed).choice(len(blocks), size=min(samples, len(blocks)), replace=False)
    inputs = torch.from_numpy(blocks[rows, :-1].astype(np.int64))
    return list(inputs.split(batch_size))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList holding the model's decoder blocks (``model.layers``, ``transformer.h``...)."""
    return model.get_submodule(decoder_layers_name(model))


@contextmanager
def forward_hooks(hooks: Mapping[nn.Module, Hook]) -> Iterator[None]:
    """Register ``{module: hook(module, args, kwargs, output)}`` for the block; always removed on exit."""
    handles = []
    try:
        for module, fn in hooks.items():
            handles.append(module.register_forward_hook(fn, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def block_input(args: tuple, kwargs: dict) -> Tensor:
    """The hidden state a decoder block was called with (positional or ``hidden_states=``)."""
    return args[0] if args else kwargs["hidden_states"]


def block_output(output: Any) -> Tensor:
    """The hidden state a decoder block returned (transformers 5 returns a tensor, older ones a tuple)."""
    return output if isinstance(output, Tensor) else output[0]


def run_calibration(model: nn.Module, batches: list[Tensor]) -> None:
    """Run every batch through the model under ``no_grad`` in eval mode (then restore the mode).

    Only the hooks' side effects matter; the outputs are dropped."""
    if not batches:
        raise DistillError("pruning needs calibration data, but no calibration batches were given")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids.to(device), use_cache=False)
    finally:
        model.train(was_training)


def cosine_per_token(inp: Tensor, out: Tensor) -> Tensor:
    """Cosine similarity between input and output hidden states, one value per token (float32)."""
    return nn.functional.cosine_similarity(inp.float(), out.float(), dim=-1)


def capture_block_io(
    model: nn.Module, batches: list[Tensor], statistic: Callable[[Tensor, Tensor], Tensor] = cosine_per_token
) -> list[float]:
    """Per decoder block, ``statistic(input_hidden, output_hidden)`` averaged over all calibration tokens.

    ``statistic`` returns one value per token (any shape); every token counts equally,
    whatever batch it is in. The default is the input/output cosine similarity.
    """
    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)

    def record(i: int) -> Hook:
        def hook(module, args, kwargs, output):
            values = statistic(block_input(args, kwargs), block_output(output))
            sums[i] += values.double().sum().item()
            counts[i] += values.numel()

        return hook

    with forward_hooks({layer: record(i) for i, layer in enumerate(layers)}):
        run_calibration(model, batches)
    return [s / c for s, c in zip(sums, counts)]
