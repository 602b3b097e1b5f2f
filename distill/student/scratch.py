"""Llama-architecture models built from flat arguments (the teacher-from-scratch and control path)."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from distill.errors import DistillError


def build_llama(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_seq_len: int = 256,
    tie_embeddings: bool = True,
    eos_token_id: int | None = None,
) -> LlamaForCausalLM:
    if hidden_size % num_heads:
        raise DistillError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if min(vocab_size, hidden_size, num_layers, num_heads) < 1:
        raise DistillError("model sizes (vocab, hidden, layers, heads) must all be >= 1")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        # SwiGLU's usual 8/3 ratio, rounded up to a multiple of 64 for fast matmuls.
        intermediate_size=intermediate_size or -(-hidden_size * 8 // 3 // 64) * 64,
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return LlamaForCausalLM(config)


def scratch_student(teacher: PreTrainedModel | None, vocab_size: int, **arch) -> LlamaForCausalLM:
    """A from-scratch Llama student that shares the teacher's vocabulary (no teacher needed:
    with teacher=none or a cache the pipeline fills in the tokenizer's EOS)."""
    eos = teacher.config.eos_token_id if teacher is not None else None
    return build_llama(vocab_size=vocab_size, eos_token_id=eos, **arch)
