import numpy as np
import pytest
import torch

from distill.errors import DistillError
from distill.student.calibration import (
    block_input,
    block_output,
    calibration_batches,
    capture_block_io,
    decoder_layers,
    forward_hooks,
)
from tests.student.tiny_models import VOCAB, tiny_model


def blocks(n=10, seq_len=8, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, seq_len + 1), dtype=np.int32)


def test_batches_are_inputs_of_a_seeded_random_subset():
    data = blocks(n=20)
    batches = calibration_batches(data, samples=7, batch_size=3, seed=1)
    assert [b.shape for b in batches] == [(3, 8), (3, 8), (1, 8)]
    assert all(b.dtype == torch.long for b in batches)
    rows = torch.cat(batches).numpy()
    inputs = [tuple(r) for r in data[:, :-1]]
    assert len({tuple(r) for r in rows}) == 7 and all(tuple(r) in inputs for r in rows)
    again = calibration_batches(data, samples=7, batch_size=3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = torch.cat(calibration_batches(data, samples=7, batch_size=3, seed=2))
    assert not torch.equal(torch.cat(batches), other)


def test_more_samples_than_rows_uses_every_row_once():
    data = blocks(n=5)
    rows = torch.cat(calibration_batches(data, samples=64, batch_size=8)).numpy()
    assert sorted(map(tuple, rows)) == sorted(map(tuple, data[:, :-1]))


@pytest.mark.parametrize("data", [None, np.zeros((0, 9), dtype=np.int64), np.zeros(9, dtype=np.int64)])
def test_missing_or_malformed_data_is_a_user_error(data):
    with pytest.raises(DistillError):
        calibration_batches(data)


def test_nonpositive_sizes_are_a_user_error():
    with pytest.raises(DistillError):
        calibration_batches(blocks(), samples=0)
    with pytest.raises(DistillError):
        calibration_batches(blocks(), batch_size=0)


@pytest.mark.parametrize("kind,attr", [("llama", "model.layers"), ("gpt2", "transformer.h")])
def test_decoder_layers(kind, attr):
    model = tiny_model(kind)
    assert decoder_layers(model) is model.get_submodule(attr) and len(decoder_layers(model)) == 4


def test_hooks_are_removed_even_on_error():
    layer = torch.nn.Linear(2, 2)
    seen = []
    with pytest.raises(RuntimeError):
        with forward_hooks({layer: lambda m, args, kwargs, out: seen.append(block_output(out))}):
            layer(torch.ones(1, 2))
            raise RuntimeError("boom")
    assert len(seen) == 1 and not layer._forward_hooks
    layer(torch.ones(1, 2))
    assert len(seen) == 1


def test_block_io_helpers_take_positional_keyword_tensor_and_tuple():
    x = torch.ones(2)
    assert block_input((x,), {}) is x and block_input((), {"hidden_states": x}) is x
    assert block_output(x) is x and block_output((x, None)) is x


def test_capture_averages_a_statistic_over_all_tokens_and_restores_the_mode():
    model = tiny_model("llama").train()
    data = blocks(n=5)
    norm = lambda inp, out: (out - inp).norm(dim=-1)  # noqa: E731
    uneven = capture_block_io(model, calibration_batches(data, samples=5, batch_size=2), norm)
    whole = capture_block_io(model, calibration_batches(data, samples=5, batch_size=5), norm)
    assert model.training and not any(layer._forward_hooks for layer in decoder_layers(model))
    np.testing.assert_allclose(uneven, whole, rtol=1e-5)
    # By hand: per-token norms of the residual update, from the hidden states HF reports.
    model.eval()
    model.model.norm = torch.nn.Identity()  # so the last hidden state is the last block's output
    with torch.no_grad():
        hs = model(input_ids=torch.from_numpy(data[:, :-1].astype(np.int64)), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(whole, [norm(hs[i], hs[i + 1]).mean().item() for i in range(4)], rtol=1e-5)


def test_no_batches_is_a_user_error():
    with pytest.raises(DistillError):
        capture_block_io(tiny_model("llama"), [])
