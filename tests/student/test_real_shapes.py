"""The student builders on real model families at full size, on the meta device (no weights, no memory).

Each fixture is a public ``config.json`` (architecture facts only: tests/fixtures/configs/README.md). The
builders run as ``plan=true`` runs them (``distill.student.support``: a weightless teacher gives a
weightless student) and every count is checked against a closed form written from the config alone, and
the teachers' against the published sizes.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill.errors import DistillError
from distill.student.depth import depth_pruned
from distill.student.lora import apply_lora
from distill.student.moe import moe_upcycle
from distill.student.width import width_pruned

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file())

# Published sizes, as their model cards (or the Hub's safetensors count) state them: (total, non-embedding),
# in billions, with the precision they are given to. Non-embedding: Qwen3's model cards give it.
PUBLISHED = {
    "llama-3.2-1b": ("1.24", None),  # Hub safetensors count (Meta's card rounds it to 1.23B)
    "llama-3.1-8b": ("8.03", None),
    "qwen3-0.6b": ("0.6", "0.44"),
    "qwen3-1.7b": ("1.7", "1.4"),
    "qwen3-4b": ("4.0", "3.6"),
    "qwen3-8b": ("8.2", "6.95"),
    "mistral-7b-v0.1": ("7.24", None),
    "gemma-2-2b": ("2.61", None),
}


@functools.cache
def teacher(name: str):
    config = AutoConfig.from_pretrained(FIXTURES / name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def block_params(c) -> int:
    """One decoder block, from the config: attention, the gated MLP and the norms."""
    h, i = c.hidden_size, c.intermediate_size
    d = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q, kv = c.num_attention_heads * d, c.num_key_value_heads * d
    norms = 4 if c.model_type == "gemma2" else 2  # Gemma-2 also norms before and after its MLP
    qk_norm = 2 * d if c.model_type == "qwen3" else 0
    return h * q + 2 * h * kv + q * h + 3 * h * i + norms * h + qk_norm


def embedding_params(c) -> int:
    return c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)


def closed_form(c) -> int:
    return embedding_params(c) + c.num_hidden_layers * block_params(c) + c.hidden_size  # + the final norm


def within_published(value: int, published: str) -> bool:
    """Within half a unit of the published figure's last digit (1.24 -> ±0.005B)."""
    decimals = len(published.split(".")[1]) if "." in published else 0
    return abs(value / 1e9 - float(published)) <= 0.5 * 10**-decimals + 1e-12


def test_every_family_is_here():
    assert set(FAMILIES) == set(PUBLISHED)
    assert {teacher(n).config.model_type for n in FAMILIES} == {"llama", "qwen3", "mistral", "gemma2"}


@pytest.mark.parametrize("name", FAMILIES)
def test_the_teacher_builds_with_its_published_size(name):
    model = teacher(name)
    assert all(p.is_meta for p in model.parameters())
    n = count(model)
    assert n == closed_form(model.config)
    total, non_embedding = PUBLISHED[name]
    assert within_published(n, total), (n, total)
    if non_embedding:
        assert within_published(n - embedding_params(model.config), non_embedding), non_embedding


@pytest.mark.parametrize("name", FAMILIES)
def test_depth_pruning_to_a_target_size(name):
    big = teacher(name)
    c = big.config
    outside, block = count(big) - c.num_hidden_layers * block_params(c), block_params(c)
    target = count(big) // 2
    student = depth_pruned(big, target_params=target)
    k = (target - outside) // block  # the most blocks that fit
    assert student.config.num_hidden_layers == k and count(student) == outside + k * block <= target
    assert all(p.is_meta for p in student.parameters())
    assert student.pruning_report["params_after"] == count(student)


@pytest.mark.parametrize("name", FAMILIES)
def test_width_pruning_to_a_target_size(name):
    big = teacher(name)
    target = count(big) // 2
    student = width_pruned(big, target_params=target)
    c = student.config
    assert count(student) == closed_form(c) <= target
    assert count(student) > 0.98 * target  # the search steps channels by 8: it gets close
    assert c.hidden_size % 8 == 0 and c.intermediate_size % 8 == 0
    assert c.num_key_value_heads == big.config.num_key_value_heads  # KV groups kept unless given
    assert c.head_dim == (
        getattr(big.config, "head_dim", None) or big.config.hidden_size // big.config.num_attention_heads
    )


def test_minitron_4b_width_is_llama_3_1_minitron_4b():
    """NVIDIA's Llama-3.1-Minitron-4B-Width: hidden 3072, MLP 9216, heads kept; published 4.5B."""
    student = width_pruned(teacher("llama-3.1-8b"), hidden_size=3072, intermediate_size=9216)
    assert count(student) == closed_form(student.config) == 4_512_746_496
    assert within_published(count(student), "4.5")


def lora_params(model, r: int) -> int:
    """r × (in + out) for every linear layer inside the decoder blocks."""
    return sum(
        r * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in n
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_wraps_the_pruned_student(name):
    student = depth_pruned(teacher(name), num_layers=2)
    expected, before = lora_params(student, 16), count(student)
    wrapped = apply_lora(student, r=16)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert trainable == expected and count(wrapped) == before + expected


@pytest.mark.parametrize("name", FAMILIES)
def test_qlora_quantizes_every_base_layer(name):
    """The QLoRA plugin's own conversion runs on meta weights: every LoRA base becomes packed NF4."""
    from distill.quant.qlora import FrozenLinear4bit, QLoRAPlugin

    student = apply_lora(depth_pruned(teacher(name), num_layers=2), r=16)
    bases = {n: (m.in_features, m.out_features) for n, m in student.named_modules() if n.endswith("base_layer")}
    QLoRAPlugin(precision="bf16-mixed").quantize(student)
    modules = dict(student.named_modules())
    for n, (n_in, n_out) in bases.items():
        layer = modules[n]
        assert isinstance(layer, FrozenLinear4bit), n
        assert layer.weight.numel() == n_in * n_out // 2  # two 4-bit weights per byte
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("name", FAMILIES)
def test_moe_upcycling(name):
    big = teacher(name)
    c = big.config
    if c.model_type == "gemma2":
        with pytest.raises(DistillError, match="llama, mistral, qwen2 or qwen3"):
            moe_upcycle(big, c.vocab_size, num_experts=8, experts_per_token=2)
        return
    moe = moe_upcycle(big, c.vocab_size, num_experts=8, experts_per_token=2)
    layers = math.ceil(c.num_hidden_layers / 2)  # every other layer, then upcycled
    mlp = 3 * c.hidden_size * c.intermediate_size
    dense = embedding_params(c) + layers * block_params(c) + c.hidden_size
    router = 8 * c.hidden_size
    report = moe.pruning_report
    assert report["dense_params"] == dense
    assert report["params_total"] == count(moe) == dense + layers * (7 * mlp + router)
    assert report["params_active"] == dense + layers * (mlp + router)
    assert all(p.is_meta for p in moe.parameters())
