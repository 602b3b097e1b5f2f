"""Layer pruning of a BERT encoder (blocks in ``encoder.layer``) by the shared depth builders."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import BertModel

from distill.errors import DistillError
from distill.student.prune import every_other_layer, keep_layers, listed_layers
from tests.embedding.tiny import tiny_bert


def test_keep_layers_copies_the_kept_encoder_blocks():
    teacher = tiny_bert(layers=6)
    student = keep_layers(teacher, [0, 4, 5])
    assert type(student) is BertModel and student.config.num_hidden_layers == 3
    assert teacher.config.num_hidden_layers == 6  # the teacher is untouched
    for new, old in enumerate([0, 4, 5]):
        s, t = student.encoder.layer[new].state_dict(), teacher.encoder.layer[old].state_dict()
        assert all(torch.equal(s[k], t[k]) for k in t)
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    assert torch.equal(student.pooler.dense.weight, teacher.pooler.dense.weight)


def test_pruned_encoder_runs_the_kept_blocks_in_order():
    teacher = tiny_bert(layers=4)
    student = keep_layers(teacher, [1, 3]).eval()
    reference = copy.deepcopy(teacher)  # the teacher itself, running only blocks 1 and 3
    reference.encoder.layer = nn.ModuleList([reference.encoder.layer[1], reference.encoder.layer[3]])
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        got = student(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        full = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, full, atol=1e-3)


def test_listed_layers_counts_negative_indices_from_the_end():
    teacher = tiny_bert(layers=6)
    student = listed_layers(teacher, layers=[0, -2, -1])
    assert student.config.num_hidden_layers == 3
    assert torch.equal(student.encoder.layer[1].output.dense.weight, teacher.encoder.layer[4].output.dense.weight)
    with pytest.raises(DistillError, match="distinct indices"):
        listed_layers(teacher, layers=[0, 7])


def test_every_other_layer_works_on_encoders():
    student = every_other_layer(tiny_bert(layers=6), offset=1)
    assert type(student) is BertModel and student.config.num_hidden_layers == 3


def test_student_dropout_is_switched_off_everywhere():
    from distill.embedding.train import set_dropout

    student = keep_layers(tiny_bert(layers=4), [0, 3]).train()
    set_dropout(student, 0.0)
    assert all(m.p == 0.0 for m in student.modules() if isinstance(m, nn.Dropout))
    ids = torch.randint(1, 100, (2, 6))
    torch.testing.assert_close(student(input_ids=ids).last_hidden_state, student(input_ids=ids).last_hidden_state)
