"""RNG states survive a checkpoint that is loaded with weights_only=True; a resumed rank continues its shard."""

import io
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.callbacks.resume import KEY, ExactResume, rng_states, set_rng_states
from distill.data.sampler import train_loader
from distill.errors import DistillError


def test_rng_states_round_trip_through_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    buf = io.BytesIO()
    torch.save({"rng": rng_states()}, buf)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    buf.seek(0)
    set_rng_states(torch.load(buf, weights_only=True)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def _trainer(rank: int, world: int, batches_done: int = 0):
    """What ExactResume reads of a trainer, for rank ``rank`` of ``world`` with a fresh training loader."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=batches_done))
    return SimpleNamespace(
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        train_dataloader=train_loader(list(range(30)), batch_size=2, seed=4, rank=rank, world_size=world),
        current_epoch=1,
        distributed_sampler_kwargs={"num_replicas": world, "rank": rank},
    )


def _epoch(loader, epoch=1):
    loader.sampler.set_epoch(epoch)
    return [b.tolist() for b in loader]


def test_a_rank_resumes_its_shard_after_the_batches_it_had_trained_on():
    for rank in range(2):
        expected = _epoch(_trainer(rank, 2).train_dataloader)
        checkpoint = {}
        ExactResume().on_save_checkpoint(_trainer(rank, 2, batches_done=3), None, checkpoint)
        assert checkpoint[KEY]["samples_seen"] == 3 * 2 * 2 and checkpoint[KEY]["world_size"] == 2
        resumed, callback = _trainer(rank, 2), ExactResume()
        callback.on_load_checkpoint(resumed, None, checkpoint)
        callback.on_train_start(resumed, None)
        assert _epoch(resumed.train_dataloader) == expected[3:]


def test_a_loader_built_without_the_trainers_ranks_is_refused():
    trainer = _trainer(0, 1)
    trainer.distributed_sampler_kwargs = {"num_replicas": 2, "rank": 1}
    with pytest.raises(DistillError, match="rank 0 of 1 but this process is rank 1 of 2"):
        ExactResume().on_train_start(trainer, None)
