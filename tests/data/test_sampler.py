"""The resumable sampler keeps shuffle=True's seeded order and resumes inside an epoch."""

import torch
from torch.utils.data import DataLoader

from distill.data.sampler import ResumableSampler, train_loader


def _batches(loader, epoch):
    loader.sampler.set_epoch(epoch) if hasattr(loader.sampler, "set_epoch") else None
    return [b.tolist() for b in loader]


def test_order_equals_a_seeded_shuffling_loader_over_epochs():
    data = list(range(37))
    reference = DataLoader(data, batch_size=4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3))
    ours = train_loader(data, batch_size=4, seed=3)
    for epoch in range(3):
        assert [b.tolist() for b in reference] == _batches(ours, epoch)


def test_resume_at_skips_what_the_epoch_already_saw_once():
    sampler = ResumableSampler(20, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume_at(epoch=2, samples_seen=8)
    assert list(sampler) == full[8:]
    assert list(sampler) == full  # the next pass over the epoch is whole again
    sampler.resume_at(epoch=1, samples_seen=8)  # a position in another epoch does not apply
    assert list(sampler) == full


def test_creating_an_iterator_leaves_the_global_rng_alone():
    loader = train_loader(list(range(10)), batch_size=2, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)
