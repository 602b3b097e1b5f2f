"""Rows and targets from encoded conversations: one per row, packed, cut to the row; and the
packed loss equals the unpacked loss (attention isolated by restarting position ids)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.data.chat.render import Encoded, encode
from distill.data.chat.rows import IGNORE_INDEX, first_fit, packed_rows, single_rows
from distill.data.chat.templates import CHATML
from distill.forward import model_outputs
from distill.losses.objective import Objective
from tests.data.chat.fixtures import CONVERSATIONS


def enc(ids, mask, prompt_len=1) -> Encoded:
    return Encoded(list(ids), np.asarray(mask, dtype=bool), prompt_len)


def test_single_rows_target_the_masked_next_tokens_and_pad():
    rows, targets, prompt_lens, stats = single_rows([enc([5, 6, 7, 8], [0, 0, 1, 1], 2)], seq_len=5, pad_id=0)
    assert rows.tolist() == [[5, 6, 7, 8, 0, 0]]
    assert targets.tolist() == [[IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX]]
    assert prompt_lens.tolist() == [2] and stats["target_tokens"] == 2


def test_overlong_conversations_are_cut_or_skipped_and_counted():
    kept = enc(range(1, 9), [0, 0, 1, 1, 1, 1, 1, 1], 2)  # targets survive the cut to 4 tokens
    dropped = enc(range(1, 9), [0, 0, 0, 0, 0, 1, 1, 1], 5)  # its prompt fills the row
    rows, targets, prompt_lens, stats = single_rows([kept, dropped], seq_len=3, pad_id=0)
    assert rows.tolist() == [[1, 2, 3, 4]] and targets.tolist() == [[IGNORE_INDEX, 3, 4]]
    assert (stats["kept"], stats["truncated"], stats["overlong_no_target"]) == (1, 1, 1)


def test_first_fit_places_longest_first_and_never_overfills():
    lengths = [5, 3, 8, 2, 4, 6]
    bins = first_fit(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins) and len(bins) == 3


def test_packed_rows_restart_positions_and_never_target_across_conversations():
    a, b = enc([1, 2, 3], [0, 1, 1]), enc([4, 5, 6, 7], [0, 0, 1, 1])
    rows, targets, positions, stats = packed_rows([a, b], seq_len=8, pad_id=0)
    assert rows.tolist() == [[4, 5, 6, 7, 1, 2, 3, 0, 0]]  # longest first
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
    # position 3 (token 7) would predict token 1 of the next conversation: not a target
    assert targets.tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX]]
    assert stats["rows"] == 1 and stats["target_tokens"] == 4


def tiny_llama(seed: int, vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(chat_tokenizer, attn):
    vocab = len(chat_tokenizer)
    student, teacher = tiny_llama(0, vocab), tiny_llama(1, vocab)
    for m in (student, teacher):
        m.config._attn_implementation = attn
    encoded = [encode(chat_tokenizer, c, CHATML) for c in CONVERSATIONS]
    seq_len = max(len(e.ids) for e in encoded) + 40
    objective = Objective(weights={"forward_kl": 1.0, "ce": 0.5})

    def loss(rows, targets, positions=None):
        inputs = torch.from_numpy(rows[:, :-1])
        pos = None if positions is None else torch.from_numpy(positions[:, :-1])
        s = model_outputs(student, inputs, vocab, objective, pos)
        t = model_outputs(teacher, inputs, vocab, objective, pos)
        return objective(s, t, torch.from_numpy(targets))["loss"]

    rows, targets, _, _ = single_rows(encoded, seq_len, pad_id=0)
    packed, packed_targets, positions, stats = packed_rows(encoded, seq_len, pad_id=0)
    assert stats["rows"] < len(encoded)  # several conversations share a row
    with torch.no_grad():
        torch.testing.assert_close(loss(packed, packed_targets, positions), loss(rows, targets), atol=1e-5, rtol=1e-5)
        # and without the positions the conversations would see each other: the check can fail
        assert abs(loss(packed, packed_targets) - loss(rows, targets)) > 1e-4
