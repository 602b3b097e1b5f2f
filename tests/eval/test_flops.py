"""FLOPs per token (PaLM's model-FLOPs convention) and the time of a token budget."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from distill.eval.flops import (
    distillation_flops_per_token,
    forward_flops_per_token,
    matmul_weights,
    train_flops_per_token,
    training_time,
)
from distill.student.lora import apply_lora
from distill.student.moe import moe_upcycle
from tests.student.test_real_shapes import FIXTURES


def meta_model(name: str):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(FIXTURES / name), dtype=torch.float32)


def test_a_dense_model_is_6n_plus_attention():
    """Llama-3.1-8B: N = every matrix but the input embedding (7.50B), attention 12·L·T·(heads × head_dim)."""
    model = meta_model("llama-3.1-8b")
    c = model.config
    n = sum(p.numel() for p in model.parameters() if p.ndim == 2) - c.vocab_size * c.hidden_size
    attention = 12 * c.num_hidden_layers * 4096 * c.hidden_size
    assert matmul_weights(model) == (n, 0)
    assert train_flops_per_token(model, 4096) == 6 * n + attention
    assert forward_flops_per_token(model, 4096) == 2 * n + attention / 3


def test_a_tied_head_is_still_a_matmul():
    model = meta_model("qwen3-0.6b")  # tied: the embedding matrix is also the head
    c = model.config
    layers = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.ndim == 2)
    assert matmul_weights(model)[0] == layers + c.vocab_size * c.hidden_size


def test_frozen_weights_cost_4n_and_adapters_6n():
    model = apply_lora(meta_model("qwen3-0.6b"), r=8)
    trained, frozen = matmul_weights(model)
    assert trained == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    layers, width = model.config.num_hidden_layers, 16 * 128
    assert train_flops_per_token(model, 1024) == 6 * trained + 4 * frozen + 12 * layers * 1024 * width


def test_an_moe_counts_the_experts_a_token_visits():
    dense_teacher = meta_model("llama-3.2-1b")
    moe = moe_upcycle(dense_teacher, 128256, num_experts=8, experts_per_token=2)
    c = moe.config
    mlp = 3 * c.hidden_size * c.intermediate_size
    dense_mlps = sum(p.numel() for n, p in moe.named_parameters() if ".experts." in n) / 8
    assert dense_mlps == c.num_hidden_layers * mlp
    others = sum(p.numel() for n, p in moe.named_parameters() if ".experts." not in n and p.ndim == 2)  # routers too
    others -= c.vocab_size * c.hidden_size  # the input embedding (tied: it is the head too, counted once below)
    assert matmul_weights(moe)[0] == others + c.vocab_size * c.hidden_size + 2 * c.num_hidden_layers * mlp


def test_distillation_adds_the_teachers_forward_only_when_it_runs():
    student, teacher = meta_model("llama-3.2-1b"), meta_model("llama-3.1-8b")
    live = distillation_flops_per_token(student, teacher, 2048)
    assert live["teacher"] == forward_flops_per_token(teacher, 2048)
    assert live["total"] == live["student"] + live["teacher"]
    cached = distillation_flops_per_token(student, None, 2048)
    assert cached["teacher"] == 0 and cached["total"] == live["student"]


def test_training_time():
    t = training_time(1e9, 6e9, devices=8, peak_tflops=1000, mfu=0.5)
    assert t["seconds"] == pytest.approx(1e9 * 6e9 / (8 * 1e15 * 0.5))
    assert t["device_hours"] == pytest.approx(t["seconds"] * 8 / 3600)
