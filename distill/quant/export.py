"""A compact packed low-bit checkpoint of a torchao-quantized student, and its loader.

Why hand-written: nothing maintained here writes real sub-byte weights that load back on CPU.
Checked with torchao 0.18 / transformers 5 on this x86 CPU:
- ``save_pretrained`` of a model quantized through ``TorchAoConfig`` works and reloads, but
  torchao's safetensors format stores ``IntxUnpackedToInt8Tensor`` unpacked: one int8 per int4 or
  int2 value (5.6 MB vs 8.5 MB bf16 for the 4-layer, 256-wide test Llama, not ~2.5 MB), and
  loading needs torchao.
- torchao's packed formats don't run here: ``Int4WeightOnlyConfig`` "plain" (``Int4Tensor``)
  requires mslk (CUDA kernels), its CPU "opaque" format is gone in 0.18, and the intx opaque
  formats need ``torch.backends.kleidiai`` (Arm) or torchao's own kernel library (not loaded).
- A torchao model saved without a TorchAoConfig fails in transformers (storage pointer of the
  tensor subclass).
So: quantized weights are stored as a little-endian bitstream of unsigned offsets (value i at
bits [i*b, (i+1)*b); int4 = 2 per byte low nibble first, int2 = 4 per byte; int8 as is), scales
in fp16 (``SCALE_DTYPE``; the QAT/PTQ code rounds fp32 scales to it before evaluation, so what
was evaluated is what is stored; a bf16 model's scales stay bf16), zero points only when any is non-zero (asymmetric), everything
else in bf16. ``load_packed`` rebuilds a plain HF model with the dequantized weights: the round
trip is exact for the quantized weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.quant.activations import quantize_activations

log = logging.getLogger(__name__)

FORMAT = "distill-packed-v1"
SCALE_DTYPE = torch.float16
WEIGHTS, MANIFEST = "quantized.safetensors", "quantization.json"


def qrange(bits: int) -> tuple[int, int]:
    """Signed range of a ``bits``-bit integer (torchao's sub-byte bounds)."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values < 2**bits into a flat uint8 bitstream (LSB first)."""
    flat = values.flatten().to(torch.uint8)
    if bits == 8:
        return flat
    shifts = torch.arange(bits, dtype=torch.uint8)
    stream = ((flat[:, None] >> shifts) & 1).flatten()
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    return ((stream.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(1)).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``count`` unsigned values (int64)."""
    if bits == 8:
        return packed[:count].to(torch.int64)
    stream = ((packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).flatten()[: count * bits]
    return (stream.view(count, bits).to(torch.int64) << torch.arange(bits)).sum(1)


def is_quantized(t) -> bool:
    return all(hasattr(t, a) for a in ("qdata", "scale", "zero_point", "block_size", "target_dtype"))


def tensor_bits(t) -> int:
    return int(str(t.target_dtype).removeprefix("torch.int"))


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, block: list[int]) -> torch.Tensor:
    """(q - zero) * scale per block, in fp32: exact (small ints times fp16 scales fit in fp32)."""
    expand = lambda t: t.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)  # noqa: E731
    q = q.to(torch.float32)
    if zero is not None:
        q = q - expand(zero.to(torch.float32))
    return q * expand(scale.to(torch.float32))


def save_packed(
    model: nn.Module,
    out_dir: str | Path,
    bits: int,
    group_size: int | None,
    *,
    scale_dtype: torch.dtype | None = None,
    dense_dtype: torch.dtype = torch.bfloat16,
) -> dict:
    """Write ``quantized.safetensors`` + ``quantization.json`` (and the model's config.json, so
    the directory loads on its own) for a torchao-quantized model. Every quantized weight must be
    ``bits`` wide in groups of ``group_size`` (None: per channel). Scales are stored in
    ``scale_dtype``; by default fp16 (``SCALE_DTYPE``), or bf16 for a bf16 model's scales, which
    fp16 would not hold exactly. Returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, entries = {}, {}
    state = model.state_dict()
    tied = tied_keys(model, state)
    for name, t in state.items():
        if name in tied:
            continue
        if is_quantized(t):
            entries[name] = pack_entry(name, t, bits, group_size, scale_dtype, tensors)
        else:
            tensors[name] = t.detach().to(dense_dtype).contiguous()
    manifest = {
        "format": FORMAT,
        "bits": bits,
        "group_size": group_size,
        "dense_dtype": str(dense_dtype),
        "quantized": entries,
        "tied": tied,
    }
    save_file(tensors, out_dir / WEIGHTS, metadata={"format": FORMAT})
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if getattr(model, "config", None) is not None:
        model.config.save_pretrained(out_dir)
    return manifest


def pack_entry(name: str, t, bits: int, group_size: int | None, scale_dtype, tensors: dict) -> dict:
    block = list(t.block_size)
    if tensor_bits(t) != bits or block != [1, group_size or t.shape[-1]]:
        raise ValueError(
            f"{name}: quantized as {t.target_dtype} in blocks {block}, not int{bits} in groups of {group_size}"
        )
    qmin, qmax = qrange(bits)
    q = t.qdata.to(torch.int16)
    if q.min() < qmin or q.max() > qmax:
        raise ValueError(f"{name}: values outside int{bits}")
    scale_dtype = scale_dtype or (torch.bfloat16 if t.scale.dtype == torch.bfloat16 else SCALE_DTYPE)
    scale = t.scale.to(scale_dtype)
    if not torch.equal(scale.to(t.scale.dtype), t.scale):
        log.warning(
            "%s: scales rounded to %s when packing; the packed weights differ from the model's", name, scale_dtype
        )
    tensors[f"{name}.qweight"] = pack_bits(q - qmin, bits)
    tensors[f"{name}.scales"] = scale.contiguous()
    asymmetric = bool(t.zero_point.ne(0).any())
    if asymmetric:
        tensors[f"{name}.zeros"] = t.zero_point.to(
            torch.int8 if t.zero_point.dtype == torch.int8 else scale_dtype
        ).contiguous()
    # torchao's int8 dynamic per-token activation rounding is part of the quantized forward:
    # recorded so that load_packed reproduces it (a save_pretrained export cannot carry it)
    activations = "int8_per_token_asym" if getattr(t, "activation_quantization", None) is not None else None
    return {
        "shape": list(t.shape),
        "bits": bits,
        "block": block,
        "zero_point": asymmetric,
        "scale_dtype": str(scale_dtype),
        "activations": activations,
    }


def tied_keys(model: nn.Module, state: dict) -> dict:
    """Output-embedding key -> input-embedding key when the config ties them (stored once)."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "tie_word_embeddings", False):
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embed is None:
        return {}
    head_key, embed_key = f"{names[id(head)]}.weight", f"{names[id(embed)]}.weight"
    a, b = state[head_key], state[embed_key]
    same = (a is b) or (
        is_quantized(a) == is_quantized(b)
        and torch.equal(a.dequantize() if is_quantized(a) else a, b.dequantize() if is_quantized(b) else b)
    )
    if not same:
        raise ValueError("tie_word_embeddings is set but the LM head and the embedding hold different weights")
    return {head_key: embed_key}


def load_packed(out_dir: str | Path, config_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """A plain HF causal LM from a packed checkpoint: quantized weights dequantized exactly
    (fp32 by default), the rest from bf16, int8 activation rounding restored where the quantized
    model had it. ``config_dir`` defaults to ``out_dir``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{out_dir}: not a {FORMAT} checkpoint")
    stored = load_file(out_dir / WEIGHTS)
    state = {name: t for name, t in stored.items() if not name.endswith((".qweight", ".scales", ".zeros"))}
    for name, e in manifest["quantized"].items():
        count = e["shape"][0] * e["shape"][1]
        q = unpack_bits(stored[f"{name}.qweight"], e["bits"], count) + qrange(e["bits"])[0]
        state[name] = dequantize(q.view(e["shape"]), stored[f"{name}.scales"], stored.get(f"{name}.zeros"), e["block"])
    for head_key, embed_key in manifest["tied"].items():
        state[head_key] = state[embed_key]
    config = AutoConfig.from_pretrained(config_dir or out_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if k not in manifest["tied"]]
    if missing or unexpected:
        raise ValueError(f"packed checkpoint does not match the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    add_activation_quantization(model, manifest)
    return model.eval()


def add_activation_quantization(model: nn.Module, manifest: dict) -> None:
    """The int8 activation rounding of the quantized linears, as forward pre-hooks (what QAT and PTQ
    evaluated), so the loaded model computes what was measured."""
    modules = dict(model.named_modules())
    for name, e in manifest["quantized"].items():
        module = modules.get(name.rsplit(".", 1)[0])
        if e.get("activations") and isinstance(module, nn.Linear):
            module.register_forward_pre_hook(quantize_activations)


def dir_size_bytes(path: str | Path) -> int:
    """Bytes of all files under ``path`` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
