"""A shuffling sampler that can resume in the middle of an epoch.

PyTorch's ``RandomSampler`` draws each epoch's order from a generator whose state moves on
as it is used, and Lightning does not save where a sampler stood inside an epoch, so a run
resumed from a mid-epoch checkpoint would see a different data order than an uninterrupted
one. Here an epoch's order is a pure function of (seed, epoch), and a resumed run starts
the epoch at the batch it had reached (``resume_at``), so the data order is exact.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed = num_samples, seed
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples already seen in it)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (and after a resume)."""
        self.epoch = epoch

    def resume_at(self, epoch: int, samples_seen: int) -> None:
        """The next iteration over ``epoch`` starts after its first ``samples_seen`` samples."""
        self._skip = (epoch, samples_seen)

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s order, drawn exactly as ``DataLoader(shuffle=True, generator=seeded)`` draws
        it (per epoch: the loader's base seed, the permutation, and ``RandomSampler``'s trailing
        permutation once the epoch is exhausted), so runs keep the data order they had before."""
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            torch.randperm(self.num_samples, generator=gen)
            torch.randperm(self.num_samples, generator=gen)
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        return torch.randperm(self.num_samples, generator=gen)

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = self._skip[1]
        self._skip = None  # only the first epoch after a resume is partial
        yield from self.order(self.epoch)[start:].tolist()

    def __len__(self) -> int:
        return self.num_samples


def train_loader(dataset, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    """Shuffled (seeded, resumable mid-epoch) full batches. The loader gets a generator of its own so
    that creating an iterator never draws from the global RNG (which a resumed run restores)."""
    return DataLoader(dataset, batch_size=batch_size, drop_last=True, sampler=ResumableSampler(len(dataset), seed),
                      generator=torch.Generator().manual_seed(seed), num_workers=num_workers)


def eval_loader(dataset, batch_size: int, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """In order; like ``train_loader`` it never draws from the global RNG."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))
