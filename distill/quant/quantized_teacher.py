"""A live teacher held in less memory: ``teacher.load_in=fp32|bf16|8bit|4bit``.

The teacher only runs forward under ``no_grad``, so its decoder linears can be stored in
bitsandbytes' 4-bit NF4 (``Linear4bit``) or 8-bit LLM.int8 (``Linear8bitLt``) formats; the
embeddings, norms and LM head stay in fp32. Both bnb layers run forward on CPU with
bitsandbytes 0.50 (LLM.int8 as a real int8 GEMM: activations cast to fp16 and quantized per
row, ``torch._int_mm`` where the CPU has AVX-512, a slow scalar fallback elsewhere), so
torchao's int8 weight-only path is not needed. As for the QLoRA
student, ``support_avx512bf16_for_cpu`` is off on the 4-bit layers: the AVX512-BF16 repack
swaps in a bf16 kernel whose outputs differ from every other path and that needs an optional
hub kernel, and a teacher's logits should not depend on the CPU it runs on.
"""

from __future__ import annotations

import logging

import bitsandbytes as bnb
import torch
from bitsandbytes.nn import Int8Params
from torch import nn
from transformers.pytorch_utils import Conv1D

from distill.errors import DistillError
from distill.quant.qlora import (
    MULTIPLE,
    bad_shapes,
    block_linears,
    features,
    listing,
    quant_state_tensors,
    quantization_device,
    replace,
    tensor_bytes,
    to_linear4bit,
)

log = logging.getLogger(__name__)

LOAD_IN = ("fp32", "bf16", "8bit", "4bit")
# LLM.int8's outlier threshold, as transformers' load_in_8bit: activation columns above it run
# in full precision, which keeps the logits close to fp32.
INT8_THRESHOLD = 6.0


class _DropCastNotice(logging.Filter):
    """bitsandbytes logs that LLM.int8 casts fp32 activations to fp16 on every layer of every
    forward: that cast is how LLM.int8 works, and the notice would flood the run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


_CAST_NOTICE = _DropCastNotice()


def to_linear8bit(layer: nn.Module, threshold: float = INT8_THRESHOLD, device=None) -> bnb.nn.Linear8bitLt:
    """A frozen LLM.int8 copy of an nn.Linear or Conv1D (row-wise int8 weights + fp32 scales),
    quantized on ``device`` when it is an available CUDA device: a quantized Linear8bitLt moved
    to CUDA afterwards keeps its scales on the CPU."""
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_CAST_NOTICE)  # idempotent
    n_in, n_out = features(layer)
    weight = layer.weight.detach()
    weight = weight.t() if isinstance(layer, Conv1D) else weight  # Conv1D stores in x out
    q = bnb.nn.Linear8bitLt(
        n_in, n_out, bias=layer.bias is not None, has_fp16_weights=False, threshold=threshold, device="meta"
    )
    q.weight = Int8Params(weight.contiguous(), requires_grad=False, has_fp16_weights=False)._quantize(
        quantization_device(layer, device)
    )
    if layer.bias is not None:
        q.bias = nn.Parameter(layer.bias.detach().to(q.weight.device, copy=True), requires_grad=False)
    return q.eval()


def quantize_teacher(model: nn.Module, load_in: str | None, device: str | torch.device | None = None) -> nn.Module:
    """``model`` (in place) stored as ``load_in``, frozen and in eval mode; returns it.

    ``fp32``/None: unchanged. ``bf16``: every parameter cast to bfloat16 (the logits come out in
    bf16; buffers stay fp32). ``8bit``/``4bit``: the linears of the decoder blocks become bitsandbytes layers, which
    need in/out features that are multiples of 64 (a DistillError names those that are not).
    ``device``: the run's device; on CUDA the layers are quantized there, as bitsandbytes expects
    (the rest of the teacher follows when the LightningModule is moved).
    """
    load_in = "fp32" if load_in is None else str(load_in).lower()
    if load_in not in LOAD_IN:
        raise DistillError(f"teacher.load_in must be one of {', '.join(LOAD_IN)}, got {load_in!r}")
    if load_in == "bf16":
        # Parameters only: buffers such as RoPE's inv_freq stay fp32 (in bf16 the rotary angles
        # drift by whole radians at long positions), and they are small.
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
    elif load_in in ("8bit", "4bit"):
        named = block_linears(model)
        bad = bad_shapes(named)
        if bad:
            raise DistillError(
                f"teacher.load_in={load_in}: bitsandbytes layers need in/out features that are "
                f"multiples of {MULTIPLE}; these teacher layers are not: {listing(bad)}"
            )
        before = model_memory_bytes(model)
        for name, layer in named:
            q = (
                to_linear8bit(layer, device=device)
                if load_in == "8bit"
                else to_linear4bit(layer, compute_dtype=None, device=device)
            )
            replace(model, name, q)
        memory = model_memory_bytes(model)
        log.info(
            "teacher.load_in=%s: %d linear layers quantized, %.2f MB -> %.2f MB",
            load_in,
            len(named),
            before / 1e6,
            memory / 1e6,
        )
    model.requires_grad_(False)
    return model.eval()


def _extra_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Storage a quantized layer holds outside its parameters: 4-bit scales and codebooks, int8 row scales."""
    if isinstance(module, bnb.nn.Linear4bit):
        return quant_state_tensors(getattr(module.weight, "quant_state", None))
    if isinstance(module, bnb.nn.Linear8bitLt):
        # Linear8bitLt moves its scales (and the int8 weight, which is the parameter) into
        # ``state`` on its first forward.
        return [t for t in (module.weight.SCB, module.state.SCB, module.state.CB) if t is not None]
    return []


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers as stored (packed 4-bit data counted as packed bytes,
    plus quantization scales and codebooks); a tensor shared by several modules counts once."""
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tensors += _extra_tensors(module)
    return tensor_bytes(tensors)
