"""The resumable sampler keeps shuffle=True's seeded order on one process, shards it across data-parallel
ranks, and resumes inside an epoch (per rank)."""

from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, DistributedSampler

from distill.data.sampler import ResumableSampler, data_shard, train_loader


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


def test_ranks_take_disjoint_equal_shards_that_cover_the_epoch_less_the_remainder():
    whole = ResumableSampler(37, seed=5)
    whole.set_epoch(1)
    order = list(whole)
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(37, seed=5, rank=rank, world_size=3)
        sampler.set_epoch(1)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == 12  # drop_last per rank: 37 // 3
    assert shards == [order[:36][rank::3] for rank in range(3)]  # the one (seed, epoch) order, dealt in turn
    # disjoint, and together the whole epoch but its last sample
    assert sorted(i for shard in shards for i in shard) == sorted(order[:36])


def test_a_rank_resumes_with_the_rest_of_its_shard():
    world, per_rank_seen = 2, 3
    full = ResumableSampler(21, seed=7, rank=1, world_size=world)
    full.set_epoch(4)
    expected = list(full)
    resumed = ResumableSampler(21, seed=7, rank=1, world_size=world)
    resumed.set_epoch(4)
    resumed.resume_at(epoch=4, samples_seen=per_rank_seen * world)  # what all ranks had seen together
    assert list(resumed) == expected[per_rank_seen:]
    assert list(resumed) == expected  # the next pass is whole again


def test_each_rank_batches_its_share_of_the_order_one_process_sees():
    data = list(range(40))
    order = [i for batch in _batches(train_loader(data, batch_size=2, seed=3), epoch=0) for i in batch]
    for rank in range(2):
        shard = order[rank::2]
        ours = _batches(train_loader(data, batch_size=2, seed=3, rank=rank, world_size=2), epoch=0)
        assert ours == [shard[i : i + 2] for i in range(0, 20, 2)]


def test_lightning_leaves_the_sampler_alone_under_ddp():
    """Lightning wraps any sampler that is not a DistributedSampler (sharding each rank's shard again)."""
    loader = train_loader(list(range(8)), batch_size=2, seed=0, rank=1, world_size=2)
    assert isinstance(loader.sampler, DistributedSampler)


def test_the_shard_comes_from_the_trainers_strategy():
    assert data_shard(None) == {"rank": 0, "world_size": 1}
    single = SimpleNamespace(distributed_sampler_kwargs=None)  # one device: not a parallel strategy
    assert data_shard(single) == {"rank": 0, "world_size": 1}
    ddp = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 4, "rank": 3})
    assert data_shard(ddp) == {"rank": 3, "world_size": 4}
