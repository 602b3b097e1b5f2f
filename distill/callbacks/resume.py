"""What a checkpoint needs beyond Lightning's own state for a resumed run to equal an
uninterrupted one: every RNG's state and where the sampler stood inside the epoch.

Lightning saves model, optimizer, schedulers and loop counters, but neither the RNG states
nor the position inside an epoch of a map-style dataset. Both are saved here and restored
just before training continues (``on_train_start``), after everything that the resumed
process did before (data preparation, teacher loading) has consumed its random numbers.
Under data parallelism every rank gets back its own RNG states and skips what it had seen
of its shard: the ranks together had seen a prefix of the epoch's order (``samples_seen``).
"""

from __future__ import annotations

import logging
import random

import lightning as L
import numpy as np
import torch

from distill.data.sampler import ResumableSampler, data_shard
from distill.errors import DistillError

log = logging.getLogger(__name__)
KEY = "distill_resume"


def rng_states() -> dict:
    """Python, numpy and torch RNG states as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
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


def _process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def every_rank(obj) -> list | None:
    """``obj`` of every rank, indexed by rank (None on one process). Collective: a checkpoint is
    saved by every rank (Lightning's save_checkpoint already waits for all of them)."""
    if not _process_group() or torch.distributed.get_world_size() == 1:
        return None
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def own_rng(saved: dict) -> dict:
    """This rank's RNG states in a checkpoint; rank 0's where the checkpoint has no state for this rank
    (one process saved it, or fewer ranks than now)."""
    by_rank = saved.get("rng_by_rank")
    rank = torch.distributed.get_rank() if _process_group() else 0
    return by_rank[rank] if by_rank and rank < len(by_rank) else saved["rng"]


class ExactResume(L.Callback):
    def __init__(self):
        self._pending: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        batch_size = getattr(trainer.train_dataloader, "batch_size", None) or 0
        sampler = train_sampler(trainer)
        world = sampler.num_replicas if sampler is not None else 1
        states = rng_states()
        checkpoint[KEY] = {
            "rng": states,
            "rng_by_rank": every_rank(states),
            "epoch": trainer.current_epoch,
            "samples_seen": batches * batch_size * world,
            "world_size": world,
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._pending = checkpoint.get(KEY)

    def on_train_start(self, trainer, pl_module) -> None:
        sampler = train_sampler(trainer)
        if sampler is not None:
            check_shard(sampler, trainer)
        if self._pending is None:
            return
        saved, self._pending = self._pending, None
        if sampler is not None:
            if saved.get("world_size", 1) != sampler.num_replicas:
                log.warning(
                    "resuming on %d data-parallel ranks a run saved on %d: the data continues after the "
                    "same samples, but the run will not equal an uninterrupted one",
                    sampler.num_replicas,
                    saved.get("world_size", 1),
                )
            sampler.resume_at(saved["epoch"], saved["samples_seen"])
        set_rng_states(own_rng(saved))


def check_shard(sampler: ResumableSampler, trainer) -> None:
    """A training loader built without the trainer's ranks would give every rank the same batches."""
    want = data_shard(trainer)
    if (sampler.rank, sampler.num_replicas) != (want["rank"], want["world_size"]):
        raise DistillError(
            f"the training sampler is rank {sampler.rank} of {sampler.num_replicas} but this process is "
            f"rank {want['rank']} of {want['world_size']}: build the loader with "
            "train_loader(..., **data_shard(trainer))"
        )
