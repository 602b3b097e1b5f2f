"""ggml's block quantizers (Q4_0, Q8_0, TQ2_0) as pure torch functions, bit for bit.

Each function reproduces llama.cpp's reference quantizer (``ggml/src/ggml-quants.c``,
``quantize_row_{q4_0,q8_0,tq2_0}_ref``, the code ``llama-quantize`` and the ``gguf`` package's
numpy port run to make model files), operation by operation in fp32, so that

    fake_quantize(w, t) == gguf.quants.dequantize(gguf.quants.quantize(w, t), t)   exactly
    pack(w, t)          == gguf.quants.quantize(w, t)                              byte for byte

(``tests/quant/test_ggml.py`` checks both on random tensors, edge cases included). QAT trains
through ``fake_quantize`` (``ggml_qat.py``), so a QAT student's forward uses exactly the weights
its GGUF file holds: the scale is computed in fp32 and *stored* in fp16, and the fake-quantized
weight is ``fp16(d) * level``, the value llama.cpp dequantizes to. There is no further rounding.

The details that make it exact (each differs from the obvious torch code):
- Q4_0 takes the *signed* value of largest magnitude (first one on ties, as ``argmax`` does),
  ``d = max / -8``, so that value maps to level -8; levels are ``min(15, trunc(x / d + 8.5))``.
- Q8_0 and TQ2_0 round half away from zero (C ``roundf``), not half to even (``torch.round``);
  ``roundf`` below is computed exactly in fp32 (the ``gguf`` package's formula).
- ``1 / d`` is computed once and multiplied, as in C (``x / d`` differs in the last bit).
"""

from __future__ import annotations

import torch

# weights per block; F16/BF16/F32 are not block types (one value each)
BLOCK_SIZE = {"q4_0": 32, "q8_0": 32, "tq2_0": 256}
FLOAT_TYPES = ("f32", "f16", "bf16")
TYPES = (*FLOAT_TYPES, *BLOCK_SIZE)
# bytes per block in the file: fp16 scale + levels (ggml-common.h: block_q4_0, block_q8_0, block_tq2_0)
BLOCK_BYTES = {"q4_0": 2 + 16, "q8_0": 2 + 32, "tq2_0": 64 + 2}


def check_type(qtype: str) -> str:
    if qtype not in TYPES:
        raise ValueError(f"unknown ggml type {qtype!r}; one of {', '.join(TYPES)}")
    return qtype


def roundf(x: torch.Tensor) -> torch.Tensor:
    """C ``roundf`` (half away from zero) in fp32; ``floor(|x| + 0.5)`` is wrong for 0.49999997."""
    a = x.abs()
    floor = a.floor()
    return torch.sign(x) * (floor + torch.floor(2 * (a - floor)))


def _blocks(w: torch.Tensor, qtype: str) -> torch.Tensor:
    n = BLOCK_SIZE[qtype]
    if w.shape[-1] % n:
        raise ValueError(f"{qtype} needs rows that are a multiple of {n} values, got a row of {w.shape[-1]}")
    return w.detach().float().reshape(*w.shape[:-1], w.shape[-1] // n, n)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    # C: id = d ? 1.0f/d : 0.0f
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))


def quantize(w: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (..., n) -> (scales fp16 (..., n/B, 1), signed integer levels int8 (..., n/B, B)); the
    value each weight stands for is ``scale.float() * level``."""
    b = _blocks(w, qtype)
    if qtype == "q4_0":
        index = b.abs().argmax(dim=-1, keepdim=True)  # first maximum on ties, like `amax < fabsf(v)`
        d = b.gather(-1, index) / -8
        levels = torch.trunc(b * _inverse(d) + 8.5).clamp(0, 15) - 8
    elif qtype == "q8_0":
        d = b.abs().amax(dim=-1, keepdim=True) / 127
        levels = roundf(b * _inverse(d))
    else:  # tq2_0: BitNet b1.58 ternary levels, one scale (the absolute maximum) per 256
        d = b.abs().amax(dim=-1, keepdim=True)
        levels = roundf(b * _inverse(d))
    return d.half(), levels.to(torch.int8)


def fake_quantize(w: torch.Tensor, qtype: str) -> torch.Tensor:
    """The weights as llama.cpp reads them back: quantize, then ``fp16(scale) * level`` (shape and
    dtype of ``w``, fp32 math). Float types round to that type (F32: unchanged)."""
    check_type(qtype)
    if qtype == "f32":
        return w.detach().clone()
    if qtype in ("f16", "bf16"):
        return w.detach().to(torch.float16 if qtype == "f16" else torch.bfloat16).to(w.dtype)
    scale, levels = quantize(w, qtype)
    return (scale.float() * levels.float()).reshape(w.shape).to(w.dtype)


def pack(w: torch.Tensor, qtype: str) -> torch.Tensor:
    """ggml's block bytes for a 2-D (or N-D) ``w``: uint8 (..., n / B * bytes per block), the layout
    ``gguf.quants.quantize`` returns and GGUF files store (little-endian fp16 scales)."""
    scale, levels = quantize(w, qtype)
    scale = scale.view(torch.uint8)  # (..., nb, 2): the fp16 bit pattern, little-endian on every torch host
    if qtype == "q4_0":
        q = (levels + 8).to(torch.uint8)
        body = q[..., :16] | (q[..., 16:] << 4)  # byte j: weight j (low nibble), weight j + 16 (high)
        out = torch.cat([scale, body], dim=-1)
    elif qtype == "q8_0":
        out = torch.cat([scale, levels.view(torch.uint8)], dim=-1)
    else:
        # 2 bits per weight, 4 per byte: in each 128-weight half, byte m holds weights m, m+32, m+64, m+96
        q = (levels + 1).to(torch.uint8).reshape(*levels.shape[:-1], 2, 4, 32)
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(4, 1)
        body = (q << shifts).sum(dim=-2, dtype=torch.uint8).reshape(*levels.shape[:-1], 64)
        out = torch.cat([body, scale], dim=-1)  # TQ2_0 keeps its scale after the levels
    return out.reshape(*w.shape[:-1], -1)


def unpack(data: torch.Tensor, qtype: str) -> torch.Tensor:
    """Inverse of ``pack``: uint8 block bytes -> fp32 weights (what llama.cpp computes with)."""
    nbytes = BLOCK_BYTES[qtype]
    blocks = data.reshape(*data.shape[:-1], data.shape[-1] // nbytes, nbytes)
    if qtype == "q4_0":
        scale, body = blocks[..., :2], blocks[..., 2:]
        levels = torch.cat([body & 0x0F, body >> 4], dim=-1).to(torch.int8) - 8
    elif qtype == "q8_0":
        scale, levels = blocks[..., :2], blocks[..., 2:].contiguous().view(torch.int8)
    else:
        body, scale = blocks[..., :64], blocks[..., 64:]
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(4, 1)
        q = (body.reshape(*body.shape[:-1], 2, 1, 32) >> shifts) & 0x03
        levels = q.reshape(*body.shape[:-1], 256).to(torch.int8) - 1
    d = scale.contiguous().view(torch.float16).float()
    return (d * levels.float()).reshape(*data.shape[:-1], -1)


# How llama.cpp's CPU matmul quantizes the activations it multiplies a weight type with (ggml-cpu.c
# type_traits_cpu[...].vec_dot_type): Q8_0 blocks of 32 for Q4_0/Q8_0, Q8_K blocks of 256 for TQ2_0
ACTIVATION_TYPE = {"q4_0": "q8_0", "q8_0": "q8_0", "tq2_0": "q8_k", "f16": "f16", "bf16": "bf16", "f32": "f32"}


def fake_quantize_activations(x: torch.Tensor, qtype: str) -> torch.Tensor:
    """``x`` (..., n) as llama.cpp's x86 CPU kernels quantize activations at run time for a weight of
    ``qtype`` (not the reference quantizers above: the SIMD code differs in the last bit):
    - Q8_0 (``arch/x86/quants.c: quantize_row_q8_0``): ``d = amax / 127`` stored in fp16, levels
      ``round_half_even(x * (127 / amax))``;
    - Q8_K (``quantize_row_q8_K_ref``, which x86 calls): the signed extreme ``max``, levels
      ``min(127, round_half_even(x * (-127 / max)))``, scale ``1 / iscale`` kept in fp32;
    - F16/BF16 weights: activations rounded to that type. Same dtype out; fp32 math."""
    kind = ACTIVATION_TYPE[check_type(qtype)]
    if kind in FLOAT_TYPES:
        return fake_quantize(x, kind)
    n = 32 if kind == "q8_0" else 256
    if x.shape[-1] % n:
        raise ValueError(f"{kind} activations need widths that are multiples of {n}, got {x.shape[-1]}")
    b = x.detach().float().reshape(*x.shape[:-1], x.shape[-1] // n, n)
    if kind == "q8_0":
        amax = b.abs().amax(dim=-1, keepdim=True)
        inv = torch.where(
            amax == 0, torch.zeros_like(amax), 127.0 / torch.where(amax == 0, torch.ones_like(amax), amax)
        )
        levels = torch.round(b * inv)  # torch.round is half to even, as _MM_ROUND_NEAREST
        out = (amax / 127).half().float() * levels
    else:
        index = b.abs().argmax(dim=-1, keepdim=True)
        mx = b.gather(-1, index)
        iscale = torch.where(mx == 0, torch.zeros_like(mx), -127.0 / torch.where(mx == 0, torch.ones_like(mx), mx))
        levels = torch.round(b * iscale).clamp(max=127)
        out = torch.where(
            mx == 0, torch.zeros_like(b), levels * (1.0 / torch.where(mx == 0, torch.ones_like(mx), iscale))
        )
    return out.reshape(x.shape).to(x.dtype)


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: exactly ``fake_quantize(w)``; backward: the straight-through estimator (identity).
    A function rather than ``w + (q - w).detach()``, whose fp32 sum is not always exactly ``q``."""

    @staticmethod
    def forward(ctx, w, qtype, activations=False):
        return fake_quantize_activations(w, qtype) if activations else fake_quantize(w, qtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def fake_quantize_ste(w: torch.Tensor, qtype: str) -> torch.Tensor:
    return _FakeQuantSTE.apply(w, qtype)


class ActivationQuantizer:
    """A forward pre-hook quantizing a layer's input as llama.cpp does for a ``qtype`` weight (STE);
    ``enabled`` False passes the input through (before ``quant.start_step``)."""

    def __init__(self, qtype: str, enabled: bool = True):
        self.qtype, self.enabled = check_type(qtype), enabled

    def __call__(self, module, args):
        if not self.enabled:
            return None  # a pre-hook returning None leaves the inputs as they are
        return (_FakeQuantSTE.apply(args[0], self.qtype, True), *args[1:])


class FakeQuantize(torch.nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``): the module's weight, as seen by its
    forward, is the ggml-quantized value; the optimizer keeps the full-precision original.
    ``enabled`` False shows the original instead (the full-precision phase before ``quant.start_step``)."""

    def __init__(self, qtype: str, enabled: bool = True):
        super().__init__()
        self.qtype, self.enabled = check_type(qtype), enabled

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_ste(w, self.qtype) if self.enabled else w

    def extra_repr(self) -> str:
        return self.qtype if self.enabled else f"{self.qtype}, disabled"
