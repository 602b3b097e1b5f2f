"""Packed low-bit checkpoint: bit packing, exact round trip, size close to bits/16 of bf16."""

from __future__ import annotations

import json

import pytest
import torch

from distill.quant.export import (
    MANIFEST,
    WEIGHTS,
    dir_size_bytes,
    load_packed,
    pack_bits,
    qrange,
    save_packed,
    unpack_bits,
)
from distill.quant.ptq import ptq_rtn
from distill.student.scratch import build_llama


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bit_packing_round_trips(bits):
    values = torch.randint(0, 1 << bits, (1001,))
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), values)


def test_int4_layout_is_two_per_byte_low_nibble_first():
    assert pack_bits(torch.tensor([0x3, 0xA, 0xF, 0x1]), 4).tolist() == [0xA3, 0x1F]
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]


def student():
    torch.manual_seed(0)
    # 128 wide, 4 layers: the linear weights dominate, as in a real student
    return build_llama(vocab_size=256, hidden_size=128, num_layers=4, num_heads=4)


def linear_names(model):
    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


@pytest.mark.parametrize("bits,group", [(4, 32), (2, 32), (8, 32), (4, None), (3, 64)])
def test_round_trip_is_exact_and_small(tmp_path, bits, group):
    model = student()
    quantized = ptq_rtn(model, weight_bits=bits, group_size=group)
    save_packed(quantized, tmp_path, bits, group)
    loaded = load_packed(tmp_path)  # config.json is written next to the weights
    for name in linear_names(model):
        ref = quantized.get_submodule(name).weight.dequantize()
        assert torch.equal(loaded.get_submodule(name).weight, ref), name
    # the rest is bf16
    emb = model.model.embed_tokens.weight
    assert torch.equal(loaded.model.embed_tokens.weight, emb.to(torch.bfloat16).float())
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tie restored, stored once

    # size of the linear weights vs bf16: (bits + 16 / group) / 16 (fp16 scale per group)
    from safetensors import safe_open

    with safe_open(tmp_path / WEIGHTS, "pt") as f:
        keys = list(f.keys())
        packed = sum(
            f.get_tensor(k).numel() * f.get_tensor(k).element_size()
            for k in keys
            if k.endswith((".qweight", ".scales", ".zeros"))
        )
    linear_params = sum(model.get_submodule(n).weight.numel() for n in linear_names(model))
    ratio = packed / (2 * linear_params)
    expected = (bits + 16 / (group or 128)) / 16
    assert abs(ratio - expected) < 0.01, (ratio, expected)
    assert "model.layers.0.mlp.up_proj.weight.zeros" not in keys  # symmetric: no zero points stored
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["bits"] == bits and manifest["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}


def test_whole_checkpoint_is_much_smaller_than_bf16(tmp_path):
    model = student()
    model.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    save_packed(ptq_rtn(model.float(), 4, 32), tmp_path / "packed", 4, 32)
    ratio = dir_size_bytes(tmp_path / "packed") / dir_size_bytes(tmp_path / "hf")
    assert ratio < 0.45, ratio  # embeddings stay bf16, so not the linear layers' 0.28


def test_wrong_bits_are_refused(tmp_path):
    quantized = ptq_rtn(student(), 4, 32)
    with pytest.raises(ValueError, match="not int2"):
        save_packed(quantized, tmp_path, 2, 32)
    assert qrange(4) == (-8, 7) and qrange(2) == (-2, 1)


def test_loaded_linears_compute_the_quantized_forward(tmp_path):
    """int8 activation rounding is part of the quantized forward: load_packed restores it, so each
    loaded linear computes what torchao's quantized linear computes (and a plain dequantized
    linear does not)."""
    model = student()
    quantized = ptq_rtn(model, weight_bits=4, group_size=32, activations="int8")
    save_packed(quantized, tmp_path, 4, 32)
    assert all(e["activations"] for e in json.loads((tmp_path / MANIFEST).read_text())["quantized"].values())
    loaded = load_packed(tmp_path)
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(0))
    name = linear_names(model)[0]
    with torch.no_grad():
        expected = quantized.get_submodule(name)(x)
        got = loaded.get_submodule(name)(x)
        plain = torch.nn.functional.linear(x, loaded.get_submodule(name).weight)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-4, rtol=1e-4)


def test_weight_only_checkpoint_adds_no_activation_rounding(tmp_path):
    quantized = ptq_rtn(student(), weight_bits=4, group_size=32, activations=None)
    save_packed(quantized, tmp_path, 4, 32)
    loaded = load_packed(tmp_path)
    assert not any(m._forward_pre_hooks for m in loaded.modules())
