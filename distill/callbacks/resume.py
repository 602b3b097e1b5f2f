"""What a checkpoint needs beyond Lightning's own state for a resumed run to equal an
uninterrupted one: every RNG's state and where the sampler stood inside the epoch.

Lightning saves model, optimizer, schedulers and loop counters, but neither the RNG states
nor the position inside an epoch of a map-style dataset. Both are saved here and restored
just before training continues (``on_train_start``), after everything that the resumed
process did before (data preparation, teacher loading) has consumed its random numbers.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from distill.data.sampler import ResumableSampler

KEY = "distill_resume"


def rng_states() -> dict:
    """Python, numpy and torch RNG states as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def train_sampler(trainer) -> ResumableSampler | None:
    loader = trainer.train_dataloader
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None) or getattr(loader, "sampler", None)
    return sampler if isinstance(sampler, ResumableSampler) else None


class ExactResume(L.Callback):
    def __init__(self):
        self._pending: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        batch_size = getattr(trainer.train_dataloader, "batch_size", None) or 0
        checkpoint[KEY] = {"rng": rng_states(), "epoch": trainer.current_epoch, "samples_seen": batches * batch_size}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._pending = checkpoint.get(KEY)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        sampler = train_sampler(trainer)
        if sampler is not None:
            sampler.resume_at(self._pending["epoch"], self._pending["samples_seen"])
        set_rng_states(self._pending["rng"])
        self._pending = None
