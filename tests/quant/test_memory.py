"""The memory model: exact for weights/gradients/optimizer states, close for saved activations; strategies
divide or add what they should. (Against measured peaks of real runs: tests/cli/test_plan.py.)"""

from __future__ import annotations

import pytest
import torch

from distill.quant.activations_memory import CHUNK_BUFFERS
from distill.quant.memory import (
    NF4_BYTES,
    Setup,
    decoder_linear_weights,
    estimate_memory,
    format_estimate,
    largest_micro_batch,
)
from distill.student.scratch import build_llama


def llama(seed=0, **kw):
    torch.manual_seed(seed)
    return build_llama(**{"vocab_size": 512, "hidden_size": 128, "num_layers": 3, "num_heads": 4, **kw})


def estimate(student, teacher=None, lora_trainable=None, **kw):
    """``estimate_memory`` with the Setup fields as keywords (vocabulary 512, CPU, single device by default)."""
    kind = kw.pop("teacher_kind", "live" if teacher is not None else "none")
    setup = Setup(**{"vocab_size": 512, "teacher_kind": kind, **kw})
    return estimate_memory(student, teacher, setup, lora_trainable)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def adamw_step(model, x):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(input_ids=x).logits.float().mean().backward()
    opt.step()
    return opt


@pytest.mark.parametrize("freeze", [False, True])
def test_params_grads_and_adamw_states_are_exact(freeze):
    model = llama()
    if freeze:  # frozen parameters hold no gradient and no optimizer state
        model.model.embed_tokens.weight.requires_grad_(False)
        for p in model.model.layers[0].parameters():
            p.requires_grad_(False)
    opt = adamw_step(model, torch.randint(0, 512, (2, 16)))
    est = estimate(model, batch_size=2, seq_len=16, precision="32-true")
    assert est["student weights"] == tensor_bytes(model.parameters())  # the tied head counted once
    assert est["gradients"] == tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    states = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    assert est["optimizer"] == tensor_bytes(states)
    transient = max(est["activations"] + est["loss buffers"], est["optimizer step"])
    held = est["student weights"] + est["optimizer"] + est["gradients"]
    assert est["total"] == held + transient


def test_bf16_student_counts_two_bytes():
    model = llama().to(torch.bfloat16)
    est = estimate(model, batch_size=1, seq_len=8, precision="bf16-mixed")
    n = sum(p.numel() for p in model.parameters())
    assert est["student weights"] == est["gradients"] == 2 * n


def test_qlora_base_in_four_bits_and_only_adapters_train():
    model = llama()
    linear = sum(w.numel() for w in decoder_linear_weights(model))
    other = sum(p.numel() for p in model.parameters()) - linear
    est = estimate(model, lora_trainable=1000, batch_size=1, seq_len=8, quant="qlora", optimizer="adamw")
    assert est["student weights"] == pytest.approx(linear * NF4_BYTES + other * 4 + 1000 * 4)
    assert est["gradients"] == 4 * other + 4 * 1000  # embeddings/norms still trainable here, the base is not
    qat = estimate(model, batch_size=1, seq_len=8, quant="qat_int8_int4")
    plain = estimate(model, batch_size=1, seq_len=8)
    assert qat["student weights"] == plain["student weights"]
    assert qat["activations"] == plain["activations"] + 4 * linear


def test_qlora_adapters_in_the_student_stay_fp32_and_train():
    """The run applies LoRA before the estimate: adapters are nn.Linear too, but never 4-bit and never frozen."""
    from distill.student.lora import apply_lora

    model = apply_lora(llama(), r=4)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    base = [w for w in decoder_linear_weights(model) if all(w is not a for a in adapters)]
    est = estimate(model, batch_size=1, seq_len=8, quant="qlora")
    others = sum(p.numel() for p in model.parameters()) - sum(w.numel() for w in base)
    assert est["student weights"] == pytest.approx(sum(w.numel() for w in base) * NF4_BYTES + 4 * others)
    assert est["gradients"] == 4 * sum(a.numel() for a in adapters)


def test_teacher_at_its_load_precision():
    student, teacher = llama(), llama(hidden_size=256)
    n = sum(p.numel() for p in teacher.parameters())
    kw = dict(batch_size=1, seq_len=8)
    assert estimate(student, teacher, **kw)["teacher weights"] == 4 * n
    assert estimate(student, teacher, teacher_load_in="bf16", **kw)["teacher weights"] == 2 * n
    assert estimate(student, teacher, teacher_load_in="nf4", **kw)["teacher weights"] < n
    assert estimate(student, teacher, teacher_kind="cache", **kw)["teacher weights"] == 0  # never loaded


def saved_activation_bytes(model, x, autocast: bool) -> int:
    """What autograd really keeps for backward during the model's forward (saved-tensor hooks), parameters
    excluded (the logits' loss is the loss buffers' part)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        model(input_ids=x, use_cache=False)
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_activation_estimate_is_close_to_what_autograd_saves(precision):
    model = llama(seed=1)  # other sizes than the constants were fitted on
    x = torch.randint(0, 512, (4, 64))
    measured = saved_activation_bytes(model, x, autocast=precision == "bf16-mixed")
    est = estimate(model, batch_size=4, seq_len=64, precision=precision)["activations"]
    assert 0.75 < est / measured < 1.25, (est, measured)


@pytest.mark.parametrize("kind,attention", [("llama", "eager"), ("gemma2", "eager")])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_eager_attention_saves_its_scores(kind, attention, precision):
    """Eager attention (Gemma-2 has no other; attention-map losses switch to it) keeps heads × seq scores per
    token; Gemma-2 also soft-caps them and norms around its MLP."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        kind, vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.set_attn_implementation(attention)
    measured = saved_activation_bytes(model, torch.randint(0, 512, (2, 256)), autocast=precision == "bf16-mixed")
    est = estimate(model, batch_size=2, seq_len=256, precision=precision)["activations"]
    assert 0.85 < est / measured < 1.15, (est, measured)


def test_ddp_keeps_a_second_copy_of_the_gradients_and_fsdp_shards():
    model, teacher = llama(), llama(hidden_size=256)
    kw = dict(batch_size=2, seq_len=16)
    one = estimate(model, teacher, **kw)
    ddp = estimate(model, teacher, strategy="ddp", world_size=4, **kw)
    assert ddp["gradients"] == 2 * one["gradients"]  # DDP's buckets (gradient_as_bucket_view off)
    assert ddp["student weights"] == one["student weights"] and ddp["optimizer"] == one["optimizer"]
    fsdp = estimate(model, teacher, strategy="fsdp", world_size=4, **kw)
    for part in ("student weights", "gradients", "optimizer"):
        assert fsdp[part] == pytest.approx(one[part] / 4)
    assert fsdp["teacher weights"] == one["teacher weights"]  # replicated unless shard_teacher
    assert fsdp["activations"] == one["activations"] and fsdp["fsdp gathered"] > 0
    sharded = estimate(model, teacher, strategy="fsdp", world_size=4, shard_teacher=True, **kw)
    assert sharded["teacher weights"] == pytest.approx(one["teacher weights"] / 4)
    assert sharded["fsdp gathered"] > fsdp["fsdp gathered"]  # the teacher's root and blocks, gathered


def test_deepspeed_zero2_is_the_papers_16_bytes_split():
    """ZeRO-2 with mixed precision: 2Ψ weights + (2 + 12)Ψ / N (Rajbhandari et al. 2020)."""
    model = llama()
    n = sum(p.numel() for p in model.parameters())
    est = estimate(model, batch_size=1, seq_len=8, precision="bf16-mixed", strategy="deepspeed", world_size=8)
    assert est["student weights"] == 2 * n
    assert est["gradients"] == pytest.approx(2 * n / 8) and est["optimizer"] == pytest.approx(12 * n / 8)


def test_a_cached_teacher_holds_its_top_k_not_its_logits():
    student, teacher = llama(), llama(hidden_size=256)
    kw = dict(batch_size=2, seq_len=16)
    live = estimate(student, teacher, **kw)["loss buffers"]
    cache = estimate(student, None, teacher_kind="cache", top_k=8, **kw)["loss buffers"]
    none = estimate(student, None, **kw)["loss buffers"]
    assert cache - none == 2 * 16 * 8 * (4 + 8) and live - none == 2 * 16 * 512 * 4


def test_the_fused_loss_holds_no_logits():
    kw = dict(batch_size=8, seq_len=256)  # 2,048 tokens: logits past the loss's 256-token chunks
    assert estimate(llama(), fused_linear=True, **kw)["loss buffers"] < estimate(llama(), **kw)["loss buffers"] / 2


def test_the_fused_loss_buffers_are_counted_at_the_chunk_it_runs():
    """The fused loss grows its chunk to the hidden size (``fused_chunk``): 128 tokens here, not 32."""
    kw = dict(batch_size=8, seq_len=256, fused_linear=True, chunk_size=32)
    tokens, hidden = 8 * 256, 128
    expected = 128 * 512 * 4 * CHUNK_BUFFERS + tokens * hidden * 4
    assert estimate(llama(), **kw)["loss buffers"] == expected


def test_largest_micro_batch_is_the_last_that_fits():
    model = llama()
    setup = Setup(batch_size=1, seq_len=64, vocab_size=512, teacher_kind="none")
    budget = estimate_memory(model, None, Setup(batch_size=37, seq_len=64, vocab_size=512, teacher_kind="none"))[
        "total"
    ]
    assert largest_micro_batch(model, None, setup, budget) == 37
    assert largest_micro_batch(model, None, setup, 1000) == 0


def test_format_is_a_short_table():
    est = estimate(llama(), batch_size=2, seq_len=16)
    text = format_estimate(est)
    assert text.splitlines()[0] == "estimated training memory"
    assert "peak" in text.splitlines()[-1] and "MiB" in text
    assert len(text.splitlines()) == 2 + sum(1 for k, v in est.items() if k != "total" and v) + 1


@pytest.mark.parametrize("load_in", ["bf16", "8bit", "4bit"])
def test_teacher_estimate_matches_the_quantized_teacher(load_in):
    """The estimate of a quantized teacher is what quantize_teacher actually leaves in memory."""
    from distill.quant.quantized_teacher import model_memory_bytes, quantize_teacher

    student, teacher = llama(), llama(hidden_size=256)
    predicted = estimate(student, teacher, teacher_load_in=load_in, batch_size=2, seq_len=16)["teacher weights"]
    actual = model_memory_bytes(quantize_teacher(teacher, load_in))
    assert abs(predicted - actual) / actual < 0.1, (predicted, actual)
