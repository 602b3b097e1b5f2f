"""student=moe_upcycle: experts copied from the dense (pruned) student, fresh router, same function at init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from distill.errors import DistillError
from distill.student.moe import moe_upcycle
from distill.student.prune import every_other_layer
from tests.student.tiny_models import VOCAB, tiny_model

CONFIG = Path(__file__).parents[2] / "configs" / "student"
TOKENS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def logits(model, tokens=TOKENS):
    model.eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize(
    "kind,moe_type", [("llama", "mixtral"), ("mistral", "mixtral"), ("qwen2", "qwen2_moe"), ("qwen3", "qwen3_moe")]
)
def test_at_init_the_moe_computes_what_the_dense_student_computes(kind, moe_type):
    teacher = tiny_model(kind)
    dense, moe = every_other_layer(teacher), moe_upcycle(teacher, VOCAB)
    assert moe.config.model_type == moe_type and moe.config.num_hidden_layers == 2
    # identical experts and top-k weights renormalised to 1: equal up to float rounding (fused gate_up matmul)
    torch.testing.assert_close(logits(moe), logits(dense), rtol=1e-5, atol=1e-5)


def test_experts_are_copies_and_the_rest_is_copied(llama):
    dense, moe = every_other_layer(llama), moe_upcycle(llama, VOCAB, num_experts=3)
    for d, m in zip(dense.model.layers, moe.model.layers):
        gate_up = torch.cat([d.mlp.gate_proj.weight, d.mlp.up_proj.weight])
        for e in range(3):
            assert torch.equal(m.mlp.experts.gate_up_proj[e], gate_up)
            assert torch.equal(m.mlp.experts.down_proj[e], d.mlp.down_proj.weight)
        assert torch.equal(m.self_attn.q_proj.weight, d.self_attn.q_proj.weight)
        assert torch.equal(m.input_layernorm.weight, d.input_layernorm.weight)
    assert torch.equal(moe.model.embed_tokens.weight, dense.model.embed_tokens.weight)


def test_the_router_is_fresh_and_seeded(llama):
    a, b = moe_upcycle(llama, VOCAB, seed=0), moe_upcycle(llama, VOCAB, seed=1)
    router = a.model.layers[0].mlp.gate.weight
    assert router.shape == (4, 64) and abs(router.std().item() - 0.02) < 0.006
    assert torch.equal(router, moe_upcycle(llama, VOCAB, seed=0).model.layers[0].mlp.gate.weight)
    assert not torch.equal(router, b.model.layers[0].mlp.gate.weight)
    assert not torch.equal(router, a.model.layers[1].mlp.gate.weight)


@pytest.mark.parametrize("k", [1, 2])
def test_parameter_accounting(llama, k):
    moe = moe_upcycle(llama, VOCAB, num_experts=4, experts_per_token=k)
    r = moe.pruning_report
    dense = every_other_layer(llama)
    expert = 3 * 64 * 128  # gate, up, down of one dense MLP
    assert r["method"] == "moe_upcycle" and (r["experts"], r["experts_per_token"]) == (4, k)
    assert r["params_total"] == sum(p.numel() for p in moe.parameters())
    assert r["dense_params"] == sum(p.numel() for p in dense.parameters())
    assert r["router_params"] == 2 * 4 * 64
    assert r["params_active"] < r["params_total"]
    assert r["params_total"] == r["dense_params"] + r["router_params"] + 2 * 3 * expert
    # per token k full-width experts run: dense-sized when k == 1, one more MLP per layer for each extra k
    assert r["params_active"] == r["dense_params"] + r["router_params"] + 2 * (k - 1) * expert


def test_save_and_reload(llama, tmp_path):
    moe = moe_upcycle(llama, VOCAB)
    moe.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(logits(again), logits(moe))


def test_training_reaches_router_and_experts(llama):
    moe = moe_upcycle(llama, VOCAB).train()
    optimizer = torch.optim.Adam(moe.parameters(), lr=1e-3)
    mlp = moe.model.layers[0].mlp
    router_grads = []
    for _ in range(2):
        optimizer.zero_grad()
        moe(TOKENS, labels=TOKENS).loss.backward()
        assert (mlp.experts.gate_up_proj.grad.abs().amax(dim=(1, 2)) > 0).all()  # every expert learns
        assert mlp.experts.down_proj.grad.abs().sum() > 0
        router_grads.append(mlp.gate.weight.grad.abs().max().item())
        optimizer.step()
    # identical experts: the router only rescales equal outputs, so its step-0 gradient is ~0;
    # the experts see different tokens, drift apart, and then the router learns
    assert router_grads[0] < 1e-8 < 1e-5 < router_grads[1]


def test_expert_noise_breaks_the_symmetry_at_once(llama):
    moe = moe_upcycle(llama, VOCAB, expert_noise_std=0.01).train()
    moe(TOKENS, labels=TOKENS).loss.backward()
    assert moe.model.layers[0].mlp.gate.weight.grad.abs().max() > 1e-6
    experts = moe.model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(experts[0], experts[1])


def test_the_yaml_builds_it(llama):
    make = instantiate(OmegaConf.load(CONFIG / "moe_upcycle.yaml"))
    moe = make(teacher=llama, vocab_size=VOCAB)
    assert moe.config.num_local_experts == 4 and moe.config.num_experts_per_tok == 2


def test_base_can_be_any_dense_builder(llama):
    moe = moe_upcycle(llama, VOCAB, base="distill.student.prune.every_other_layer", num_experts=2)
    assert moe.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "teacher,kwargs,match",
    [
        (None, {}, "needs a teacher"),
        ("gpt2", {}, "llama, mistral, qwen2 or qwen3"),
        ("llama", dict(num_experts=2, experts_per_token=3), "experts_per_token <= num_experts"),
        ("llama", dict(base="nowhere"), "unknown base"),
    ],
)
def test_bad_choices_are_one_line_errors(teacher, kwargs, match):
    with pytest.raises(DistillError, match=match):
        moe_upcycle(tiny_model(teacher) if teacher else None, VOCAB, **kwargs)
