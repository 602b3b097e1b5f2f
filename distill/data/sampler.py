"""A shuffling sampler that can resume in the middle of an epoch, on one process or on several.

PyTorch's ``RandomSampler`` draws each epoch's order from a generator whose state moves on
as it is used, and Lightning does not save where a sampler stood inside an epoch, so a run
resumed from a mid-epoch checkpoint would see a different data order than an uninterrupted
one. Here an epoch's order is a pure function of (seed, epoch), and a resumed run starts
the epoch after the samples it had already seen (``resume_at``), so the data order is exact.

Under data parallelism each rank takes its shard of that one order, as ``DistributedSampler(drop_last=True)``
shards: every ``world_size``-th sample from the rank's offset. The ranks together then always
have seen a prefix of the epoch's order, which is all a checkpoint has to hold. The sampler is a
``DistributedSampler`` so that Lightning never wraps it in a sampler of its own (which would shard
it again and lose the position); Lightning's ``use_distributed_sampler`` stays on for the loaders
that do not shard themselves (validation, the embedding task's).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        # sets num_replicas, rank, epoch and num_samples = dataset_size // world_size (the samples per rank)
        super().__init__(
            range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.dataset_size = dataset_size
        self._skip: tuple[int, int] | None = None  # (epoch, samples of its order the ranks have seen together)

    def resume_at(self, epoch: int, samples_seen: int) -> None:
        """The next iteration over ``epoch`` starts after the first ``samples_seen`` samples of its order,
        which all ranks together have seen (on one process: this one)."""
        self._skip = (epoch, samples_seen)

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s order, drawn exactly as ``DataLoader(shuffle=True, generator=seeded)`` draws
        it (per epoch: the loader's base seed, the permutation, and ``RandomSampler``'s trailing
        permutation once the epoch is exhausted), so runs keep the data order they had before."""
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            torch.randperm(self.dataset_size, generator=gen)
            torch.randperm(self.dataset_size, generator=gen)
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        return torch.randperm(self.dataset_size, generator=gen)

    def shard(self, epoch: int, start: int = 0) -> torch.Tensor:
        """This rank's samples of ``epoch`` after the order's first ``start``: the rest is cut to a
        multiple of the world size (every rank gets as many, so none waits at a collective for a
        batch the others do not have) and dealt out in turn. With ``start`` a multiple of the world
        size this is the rank's full shard without its first ``start // world_size`` samples."""
        rest = self.order(epoch)[start:]
        usable = len(rest) // self.num_replicas * self.num_replicas
        return rest[:usable][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = self._skip[1]
        self._skip = None  # only the first epoch after a resume is partial
        yield from self.shard(self.epoch, start).tolist()

    def __len__(self) -> int:
        return self.num_samples


def data_shard(trainer) -> dict:
    """This process's place among those sharing the training data, as the trainer's strategy gives
    it to a ``DistributedSampler`` (data-parallel ranks only: a model-parallel group shares a shard);
    rank 0 of 1 without a trainer or on one device."""
    kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
    if not kwargs or kwargs["num_replicas"] < 1:
        return {"rank": 0, "world_size": 1}
    return {"rank": int(kwargs["rank"]), "world_size": int(kwargs["num_replicas"])}


def train_loader(
    dataset, batch_size: int, seed: int, num_workers: int = 0, rank: int = 0, world_size: int = 1, collate_fn=None
) -> DataLoader:
    """Shuffled (seeded, resumable mid-epoch) full batches of this rank's shard. The loader gets a
    generator of its own so that creating an iterator never draws from the global RNG (which a
    resumed run restores)."""
    sampler = ResumableSampler(len(dataset), seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=True,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        collate_fn=collate_fn,
    )


def eval_loader(dataset, batch_size: int, seed: int = 0, num_workers: int = 0, collate_fn=None) -> DataLoader:
    """In order (under DDP Lightning gives each rank its part); like ``train_loader`` it never draws
    from the global RNG."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn,
    )
