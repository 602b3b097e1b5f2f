"""Tiny random models of every supported architecture, built from their configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill.data.tokenizer import train_bpe

VOCAB = 128
# a few lines of Python: enough text for a byte-level BPE of a few hundred tokens
TEXTS = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "import os\nprint(os.getcwd())\n"] * 5

# Small enough for CPU tests, big enough that heads, KV groups (GQA) and MLP channels can be pruned.
CONFIGS = {
    "llama": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
    "mistral": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=None,
    ),
    "qwen2": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
    "qwen3": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    ),
    "gemma": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    ),
    "gemma2": dict(  # four norms per block, soft-capping, alternating sliding/global attention
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    ),
    "gpt2": dict(n_embd=64, n_layer=4, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
}


def tiny_model(kind: str, vocab_size: int = VOCAB, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(kind, vocab_size=vocab_size, **{**CONFIGS[kind], **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_model_dir(path: Path, vocab_size: int) -> Path:
    """A saved tiny Llama and its own BPE tokenizer of ``vocab_size`` tokens: a model dir as users pass one."""
    train_bpe(TEXTS, vocab_size, path)
    tiny_model("llama", vocab_size=vocab_size).save_pretrained(path)
    return path
