"""Sequence-level KD: teacher continuations equal a hand-written greedy loop, are masked, and are cached."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.data.seqkd import cached_continuations, generate_continuations, seqkd_datamodule
from distill.errors import DistillError
from distill.student.scratch import build_llama

VOCAB, P, N = 300, 6, 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # untied: a tiny random model with tied embeddings just repeats its last token, a weak greedy check
    return build_llama(
        VOCAB, hidden_size=32, num_layers=1, num_heads=2, max_seq_len=64, eos_token_id=0, tie_embeddings=False
    ).eval()


@pytest.fixture(scope="module")
def blocks() -> np.ndarray:
    return np.random.default_rng(0).integers(1, VOCAB, size=(5, 17)).astype(np.int32)


@torch.no_grad()
def _manual_greedy(model, prompt: np.ndarray, steps: int, eos: int | None) -> list[int]:
    """argmax of the full forward at each step, no KV cache."""
    ids = torch.from_numpy(prompt.astype(np.int64))[None]
    out = []
    for _ in range(steps):
        nxt = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        if nxt == eos:
            break
    return out


def test_greedy_matches_a_manual_loop_and_masks_prompt_and_after_eos(model, blocks):
    free = [_manual_greedy(model, b[:P], N, None) for b in blocks[:2]]
    eos = free[0][2]  # make row 0 stop after its third token
    rows, targets = generate_continuations(
        model, blocks, prompt_tokens=P, new_tokens=N, eos_token_id=eos, pad_token_id=VOCAB - 1, batch_size=2
    )
    assert rows.shape == (5, P + N) and targets.shape == (5, P + N - 1)
    assert np.array_equal(rows[:, :P], blocks[:, :P])
    assert (targets[:, : P - 1] == -100).all()
    for i in range(2):
        gen = _manual_greedy(model, blocks[i, :P], N, eos)
        assert rows[i, P : P + len(gen)].tolist() == gen
        assert (rows[i, P + len(gen) :] == VOCAB - 1).all()  # padded after the EOS
        assert targets[i, P - 1 : P - 1 + len(gen)].tolist() == gen  # the EOS itself is a target
        assert (targets[i, P - 1 + len(gen) :] == -100).all()
    assert rows[0, P + 2] == eos and (targets[0, P + 2 :] == -100).all()


def test_sampling_is_seeded_and_leaves_global_rng_alone(model, blocks):
    kw = dict(prompt_tokens=P, new_tokens=N, temperature=1.0, eos_token_id=None, pad_token_id=0, vocab_size=250)
    state = torch.get_rng_state()
    a, _ = generate_continuations(model, blocks, seed=1, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = generate_continuations(model, blocks, seed=1, **kw)
    c, _ = generate_continuations(model, blocks, seed=2, **kw)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a[:, P:].max() < 250  # ids past the tokenizer (padded embedding rows) are never written


def test_cached_continuations_build_once(tmp_path, blocks):
    calls = []

    def build():
        calls.append(1)
        return blocks[:, :-1].astype(np.int64), np.full((5, 15), -100)

    first = cached_continuations(tmp_path, {"teacher": "t", "temperature": 0.0}, build)
    again = cached_continuations(tmp_path, {"teacher": "t", "temperature": 0.0}, build)
    assert len(calls) == 1 and all(np.array_equal(x, y) for x, y in zip(first, again))
    cached_continuations(tmp_path, {"teacher": "t", "temperature": 1.0}, build)
    assert len(calls) == 2


class _Tok:
    eos_token_id, pad_token_id = 0, 0

    def __len__(self) -> int:
        return VOCAB


def test_seqkd_datamodule_serves_cached_continuations(tmp_path: Path, model, blocks):
    base = SimpleNamespace(
        train_blocks=blocks,
        val_blocks=blocks[:2],
        tokenizer=_Tok(),
        tokenizer_key="k",
        data_key="d",
        seq_len=16,
        batch_size=2,
        seed=0,
        num_workers=0,
        cache_dir=str(tmp_path),
        val_dataloader=lambda: "base val loader",
    )
    kw = dict(teacher_key="teacher", prompt_tokens=P, new_tokens=N)
    dm = seqkd_datamodule(base, model, **kw)
    assert dm.seq_len == 16 and dm.val_dataloader() == "base val loader" and dm.data_key != "d"
    assert dm.train_blocks.shape == (5, 17) and (dm.train_targets[:, P + N - 1 :] == -100).all()  # padded to 17
    inputs, targets, idx = next(iter(dm.train_dataloader()))
    assert inputs.shape == targets.shape == (2, 16)
    assert torch.equal(inputs, torch.from_numpy(dm.train_blocks[idx.numpy(), :-1]))
    assert torch.equal(targets, torch.from_numpy(dm.train_targets[idx.numpy()]))
    no_model = SimpleNamespace(generate=None)  # a second run must not generate
    again = seqkd_datamodule(base, no_model, **kw)
    assert np.array_equal(again.train_blocks, dm.train_blocks) and again.data_key == dm.data_key
    with pytest.raises(DistillError, match="exceeds data.seq_len"):
        seqkd_datamodule(base, model, teacher_key="teacher", prompt_tokens=P, new_tokens=17 - P + 1)
