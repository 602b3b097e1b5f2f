"""A live teacher stored in bf16, LLM.int8 or NF4: smaller, close to fp32, frozen."""

from __future__ import annotations

import copy

import bitsandbytes as bnb
import pytest
import torch

from distill.errors import DistillError
from distill.quant.qlora import dequantize
from distill.quant.quantized_teacher import model_memory_bytes, quantize_teacher
from tests.student.tiny_models import VOCAB, tiny_model

# Decoder linears dominate (as in a real teacher), all multiples of 64.
LLAMA = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2)
# load_in -> (bytes of the decoder linears relative to fp32: ideal, upper bound; logit error bound).
# 8bit: int8 weights + one fp32 scale per row. 4bit: 4 bits + an 8-bit scale per 64 weights
# (double quantization) + per-layer codebooks (1 KB each, about 1% here). The tiny random teacher is a hard case for NF4
# (the error compounds through random layers); measured: bf16 0.7%, 8bit 1.6%, 4bit 19%.
EXPECTED = {"bf16": (1 / 2, 1 / 2, 0.02), "8bit": (1 / 4, 0.26, 0.05), "4bit": (1 / 8, 0.15, 0.3)}


def teacher():
    return tiny_model("llama", **LLAMA)


def decoder_linear_bytes(model) -> int:
    return sum(
        p.nbytes
        for n, m in model.named_modules()
        if ".layers." in n and isinstance(m, torch.nn.Linear)
        for p in m.parameters()
    )


@pytest.mark.parametrize("load_in", ["bf16", "8bit", "4bit"])
def test_memory_shrinks_and_logits_stay_close(load_in):
    fp32 = teacher()
    x = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        ref = fp32(input_ids=x).logits
    full, linears = model_memory_bytes(fp32), decoder_linear_bytes(fp32)
    model = quantize_teacher(copy.deepcopy(fp32), load_in)
    with torch.no_grad():
        logits = model(input_ids=x).logits
        again = model(input_ids=x).logits
    memory = model_memory_bytes(model)  # after a forward: Linear8bitLt moves its scales then
    ideal, upper, max_error = EXPECTED[load_in]
    # bf16 halves every parameter (buffers stay fp32), the others only the decoder linears.
    buffers = sum(b.nbytes for b in fp32.buffers())
    scaled = full - buffers if load_in == "bf16" else linears
    rest = full - scaled
    assert rest + ideal * scaled <= memory <= rest + upper * scaled, (load_in, memory, full)
    error = ((logits.float() - ref).norm() / ref.norm()).item()
    print(f"load_in={load_in}: {full} -> {memory} bytes ({memory / full:.3f}), logit relative error {error:.4f}")
    assert error < max_error
    assert torch.equal(logits, again)  # no state change between calls (no CPU repack)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(b.dtype == torch.float32 for b in model.buffers())  # RoPE's inv_freq kept exact


def test_quantized_layers_are_the_decoder_linears_only():
    model = quantize_teacher(teacher(), "4bit")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7 and all(m.support_avx512bf16_for_cpu is False for m in layers)
    assert all(m.weight.quant_type == "nf4" for m in layers)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    int8 = quantize_teacher(teacher(), "8bit")
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in int8.modules()) == 14


def test_fp32_is_unchanged_but_frozen():
    model = teacher().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for load_in in (None, "fp32"):
        out = quantize_teacher(model, load_in)
        assert out is model and not model.training and not any(p.requires_grad for p in model.parameters())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_layers_that_are_not_multiples_of_64_are_a_clear_error():
    model = tiny_model("llama", **{**LLAMA, "intermediate_size": 96})
    for load_in in ("4bit", "8bit"):
        with pytest.raises(DistillError, match=rf"load_in={load_in}.*multiples of 64.*mlp\.gate_proj \(128 -> 96\)"):
            quantize_teacher(model, load_in)
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


def test_an_unknown_load_in_is_a_clear_error():
    with pytest.raises(DistillError, match="teacher.load_in must be one of"):
        quantize_teacher(teacher(), "int3")


def test_memory_counts_tied_weights_once():
    model = tiny_model("llama", **LLAMA, tie_word_embeddings=True)
    params = {p.data_ptr(): p.nbytes for p in model.parameters()}
    buffers = sum(b.nbytes for b in model.buffers())
    assert model_memory_bytes(model) == sum(params.values()) + buffers


def test_4bit_error_is_only_the_weight_rounding():
    """The 4-bit teacher computes exactly what an fp32 model with its dequantized NF4 weights does:
    the logit error above is NF4 rounding of the weights, nothing else."""
    model = quantize_teacher(teacher(), "4bit")
    reference = copy.deepcopy(model)
    assert dequantize(reference) == 14
    x = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, reference(input_ids=x).logits, rtol=1e-4, atol=1e-4)
