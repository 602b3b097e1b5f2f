"""Sampling from a model in the middle of a run (on-policy batches, sequence-level KD's answers)
without changing what the run holds: the model's train/eval mode, and the global RNG streams."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode (dropout off) for the block; its mode before is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def forked_rng(device: torch.device):
    """Seeding for sampling must not move the run's global RNG streams."""
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device.index or 0])
    return torch.random.fork_rng(devices=[])
