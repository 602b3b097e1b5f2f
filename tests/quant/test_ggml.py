"""ggml's block quantizers in torch against the ``gguf`` package's port of ggml-quants.c: same bytes,
same dequantized values, on random tensors and on the inputs where a naive port goes wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

from distill.quant.ggml import (  # noqa: E402
    BLOCK_SIZE,
    fake_quantize,
    fake_quantize_activations,
    fake_quantize_ste,
    pack,
    quantize,
    roundf,
    unpack,
)

QTYPES = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q8_0": gguf.GGMLQuantizationType.Q8_0}
QTYPES["tq2_0"] = gguf.GGMLQuantizationType.TQ2_0


def cases(qtype: str) -> list[torch.Tensor]:
    """Random rows at several scales, plus: all-zero blocks, ties of |max| with both signs, exact
    half-steps (the rounding mode shows), tiny values whose fp16 scale is subnormal, large ones."""
    n = BLOCK_SIZE[qtype]
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(8, 4 * n, generator=g) * s for s in (1e-3, 0.02, 1.0, 30.0)]
    rows.append(torch.randn(3, n, generator=g).pow(3))  # heavy tails
    special = torch.zeros(6, n)
    special[1, :4] = torch.tensor([0.5, -0.5, 0.25, 0.125])  # a tie of |max| with both signs
    special[2] = torch.arange(n) - n / 2  # integers: half-steps for every scale of the grid
    special[3] = torch.full((n,), 1e-6) * torch.linspace(-1, 1, n)  # subnormal fp16 scale
    special[4, 0], special[4, 1:] = 1.0, 0.49999997  # roundf(0.49999997) is 0, floor(x + 0.5) is 1
    special[5] = torch.randn(n, generator=g) * 1e4
    return [*rows, special]


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_bytes_and_values_equal_ggml_reference(qtype):
    for w in cases(qtype):
        ref_bytes = gguf_quantize(w.numpy(), QTYPES[qtype])
        ours = pack(w, qtype).numpy()
        assert ours.dtype == np.uint8 and ours.shape == ref_bytes.shape
        assert np.array_equal(ours, ref_bytes), f"{qtype}: bytes differ"
        ref_values = gguf_dequantize(ref_bytes, QTYPES[qtype])
        assert np.array_equal(fake_quantize(w, qtype).numpy(), ref_values), f"{qtype}: values differ"
        assert torch.equal(unpack(pack(w, qtype), qtype), fake_quantize(w, qtype))


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_requantizing_is_exact(qtype):
    """What the QAT student saves (fake-quantized weights) quantizes to itself: the export of a QAT
    student loses nothing."""
    w = cases(qtype)[2]
    once = fake_quantize(w, qtype)
    assert not torch.equal(once, w)
    assert torch.equal(fake_quantize(once, qtype), once)


def test_levels_and_scales_are_the_formats():
    w = torch.randn(4, 256)
    for qtype, (lo, hi), per_scale in (("q4_0", (-8, 7), 32), ("q8_0", (-127, 127), 32), ("tq2_0", (-1, 1), 256)):
        scale, levels = quantize(w, qtype)
        assert scale.dtype == torch.float16 and scale.shape == (4, 256 // per_scale, 1)
        assert levels.min() >= lo and levels.max() <= hi
        assert set(levels.unique().tolist()) >= {lo, hi} if qtype != "q8_0" else levels.abs().max() == 127
    # q4_0 maps each block's value of largest magnitude onto -8 exactly
    scale, levels = quantize(w, "q4_0")
    blocks = w.view(4, 8, 32)
    first_max = blocks.abs().argmax(-1, keepdim=True)
    assert (levels.gather(-1, first_max) == -8).all()


def test_roundf_is_half_away_from_zero():
    x = torch.tensor([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, -0.49999997, 3.0])
    assert roundf(x).tolist() == [1.0, -1.0, 2.0, 3.0, -3.0, 0.0, 0.0, 3.0]


def test_float_types_round_like_the_file():
    w = torch.randn(4, 64)
    assert torch.equal(fake_quantize(w, "f16"), w.half().float())
    assert torch.equal(fake_quantize(w, "bf16"), w.bfloat16().float())
    bf16 = gguf_quantize(w.numpy(), gguf.GGMLQuantizationType.BF16)
    assert np.array_equal(fake_quantize(w, "bf16").numpy(), gguf_dequantize(bf16, gguf.GGMLQuantizationType.BF16))


def test_straight_through_gradient_and_exact_forward():
    w = torch.randn(2, 64, requires_grad=True)
    out = fake_quantize_ste(w, "q4_0")
    assert torch.equal(out, fake_quantize(w, "q4_0"))
    (out * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).expand(2, 64))


def test_width_not_a_multiple_of_the_block_is_refused():
    with pytest.raises(ValueError, match="multiple of 256"):
        fake_quantize(torch.randn(2, 64), "tq2_0")


def test_activations_as_the_x86_kernels_quantize_them():
    """Q8_0 at run time: d = amax/127 in fp16, levels round half to even of x * (127 / amax) (the SIMD
    code, not the reference's roundf and 1/d); Q8_K: -127/max of the signed extreme, fp32 scale."""
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2] = 127.0, 2.5, -0.5  # 127/amax = 1: ties at 2.5 and -0.5
    out = fake_quantize_activations(x, "q4_0")
    assert out[0, :3].tolist() == [127.0, 2.0, -0.0]  # half to even (the reference would give 3 and -1)
    assert fake_quantize(x, "q8_0")[0, 1] == 3.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 512, generator=g)
    out = fake_quantize_activations(x, "q8_0").view(3, 16, 32)
    blocks = x.view(3, 16, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    assert torch.equal(out, (amax / 127).half().float() * torch.round(blocks * (127.0 / amax)))
    k = fake_quantize_activations(x, "tq2_0").view(3, 2, 256)
    blocks = x.view(3, 2, 256)
    mx = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    iscale = -127.0 / mx
    assert torch.equal(k, torch.round(blocks * iscale).clamp(max=127) * (1.0 / iscale))
    assert torch.equal(fake_quantize_activations(x, "f16"), x.half().float())
    assert torch.equal(fake_quantize_activations(torch.zeros(2, 256), "tq2_0"), torch.zeros(2, 256))
