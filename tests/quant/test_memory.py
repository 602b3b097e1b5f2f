"""Memory estimate: exact for params/grads/optimizer states, close for saved activations."""

from __future__ import annotations

import pytest
import torch

from distill.quant.memory import NF4_BYTES, decoder_linear_weights, estimate_memory, format_estimate
from distill.student.scratch import build_llama


def llama(seed=0, **kw):
    torch.manual_seed(seed)
    return build_llama(**{"vocab_size": 512, "hidden_size": 128, "num_layers": 3, "num_heads": 4, **kw})


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
    est = estimate_memory(model, batch_size=2, seq_len=16, precision="32-true", vocab_size=512)
    assert est["params"] == tensor_bytes(model.parameters())  # the tied head counted once
    assert est["grads"] == tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    states = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    assert est["optimizer"] == tensor_bytes(states)
    assert est["total"] == sum(v for k, v in est.items() if k != "total")


def test_bf16_student_counts_two_bytes():
    model = llama().to(torch.bfloat16)
    est = estimate_memory(model, batch_size=1, seq_len=8, precision="bf16-mixed", vocab_size=512)
    n = sum(p.numel() for p in model.parameters())
    assert est["params"] == est["grads"] == 2 * n


def test_qlora_base_in_four_bits_and_only_adapters_train():
    model = llama()
    linear = sum(w.numel() for w in decoder_linear_weights(model))
    other = sum(p.numel() for p in model.parameters()) - linear
    est = estimate_memory(
        model, batch_size=1, seq_len=8, quant="qlora", lora_trainable=1000, vocab_size=512, optimizer="adamw"
    )
    assert est["params"] == pytest.approx(linear * NF4_BYTES + other * 4 + 1000 * 4)
    assert est["grads"] == 4 * other + 4 * 1000  # embeddings/norms still trainable here, the base is not
    qat = estimate_memory(model, batch_size=1, seq_len=8, quant="qat_int8_int4", vocab_size=512)
    plain = estimate_memory(model, batch_size=1, seq_len=8, vocab_size=512)
    assert qat["params"] == plain["params"] and qat["activations"] == plain["activations"] + 4 * linear


def test_teacher_at_its_load_precision():
    student, teacher = llama(), llama(hidden_size=256)
    n = sum(p.numel() for p in teacher.parameters())
    kw = dict(batch_size=1, seq_len=8, vocab_size=512)
    assert estimate_memory(student, teacher, **kw)["teacher"] == 4 * n
    assert estimate_memory(student, teacher, teacher_load_in="bf16", **kw)["teacher"] == 2 * n
    assert estimate_memory(student, teacher, teacher_load_in="nf4", **kw)["teacher"] < n


def saved_activation_bytes(model, x, autocast: bool) -> int:
    """What autograd really keeps for backward (saved-tensor hooks), parameters excluded."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        logits = model(input_ids=x, use_cache=False).logits.float()
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten())
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_activation_estimate_is_close_to_what_autograd_saves(precision):
    model = llama(seed=1)  # other sizes than the constants were fitted on
    x = torch.randint(0, 512, (4, 64))
    measured = saved_activation_bytes(model, x, autocast=precision == "bf16-mixed")
    est = estimate_memory(model, batch_size=4, seq_len=64, precision=precision, vocab_size=512)["activations"]
    assert 0.75 < est / measured < 1.25, (est, measured)


def test_format_is_a_short_table():
    est = estimate_memory(llama(), batch_size=2, seq_len=16, vocab_size=512)
    text = format_estimate(est)
    assert text.splitlines()[0] == "estimated training memory"
    assert "total" in text.splitlines()[-1] and "MiB" in text and len(text.splitlines()) == 8


@pytest.mark.parametrize("load_in", ["bf16", "8bit", "4bit"])
def test_teacher_estimate_matches_the_quantized_teacher(load_in):
    """The estimate of a quantized teacher is what quantize_teacher actually leaves in memory."""
    from distill.quant.quantized_teacher import model_memory_bytes, quantize_teacher

    student, teacher = llama(), llama(hidden_size=256)
    estimate = estimate_memory(
        student, teacher, teacher_load_in=load_in, batch_size=2, seq_len=16, vocab_size=teacher.config.vocab_size
    )["teacher"]
    actual = model_memory_bytes(quantize_teacher(teacher, load_in))
    assert abs(estimate - actual) / actual < 0.1, (estimate, actual)
