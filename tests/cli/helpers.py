"""Helpers of the CLI tests: random Hugging Face models to bring as a teacher or student, the
command line that distills them, and small data files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

MAX_STEPS = 3  # of a byo_args run


def round_up(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def build_random_model(arch: str, vocab_size: int, eos: int):
    """A random ``arch`` model (llama, qwen2 or gpt2) at test size, its end-of-text token ``eos``."""
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config)
    if arch == "qwen2":
        config = Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=eos,
            eos_token_id=eos,
            tie_word_embeddings=True,
        )
        return Qwen2ForCausalLM(config)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=eos, eos_token_id=eos
        )
        return GPT2LMHeadModel(config)
    raise ValueError(arch)


def save_random_model(out: Path, arch: str, tokenizer_dir: Path, vocab_size: int | None = None, seed: int = 0) -> Path:
    """A random ``arch`` model + the tokenizer in ``tokenizer_dir``, saved as a HF directory (safetensors)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = build_random_model(arch, vocab_size or round_up(len(tok)), tok.eos_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    return out


def byo_args(teacher: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """distill-train on a brought teacher dir and JSONL data (text under ``content``): smoke sizes, no control."""
    return [
        "experiment=smoke",
        f"teacher.path={teacher}",
        "data=files",
        f"data.paths=[{data}]",
        "data.text_field=content",
        f"hydra.run.dir={out}",
        f"trainer.max_steps={MAX_STEPS}",
        "control=false",
        *extra,
    ]


def qa_file(path: Path) -> Path:
    """120 question/answer records (JSONL) about sums: prompt/response data for black-box distillation."""
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(120):
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            f.write(json.dumps({"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}."}) + "\n")
    return path
