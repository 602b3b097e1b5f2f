"""RNG states survive a checkpoint that is loaded with weights_only=True."""

import io
import random

import numpy as np
import torch

from distill.callbacks.resume import rng_states, set_rng_states


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
