"""A tiny random BERT encoder for fast tests (the real MiniLM is loaded only where it matters)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel


def tiny_bert(layers: int = 6, hidden: int = 32, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()
