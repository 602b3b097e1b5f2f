"""The int8 activation rounding that QAT, PTQ and the packed export share (one hook, one place)."""

from __future__ import annotations

from torch import nn
from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
    _apply_int8_act_asym_per_token_quant_dequant,
)


def quantize_activations(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: torchao's own int8 per-token asymmetric quant-dequant of the input, so
    a plain linear with dequantized weights computes exactly what the torchao linear computes."""
    return (_apply_int8_act_asym_per_token_quant_dequant(args[0]),) + tuple(args[1:])
