"""A training-memory estimate, logged before fit: what each part of a run holds, in bytes.

Exact parts (checked against the tensors after an AdamW step in the tests):
- params: every parameter at its element size, tied weights once;
- grads: trainable parameters only (frozen ones have none), at the parameter's dtype (mixed
  precision keeps fp32 master weights, so fp32 grads);
- optimizer: AdamW/Adam keep exp_avg and exp_avg_sq (parameter dtype) and a 4-byte ``step``
  tensor per trainable parameter; SGD one momentum buffer; "none" nothing.
Quantization: QAT trains full-precision weights (params as they are) plus a fake-quantized copy
of each linear weight saved for backward; QLoRA stores the base linear weights in 4 bits plus an
fp32 absmax per block of 64 (bitsandbytes NF4 without double quantization), frozen, and trains
the adapters (``lora_trainable`` of them, fp32, when the student does not have them yet).

Approximate part, activations saved for backward in a decoder LM with fused (SDPA) attention,
so no heads × seq² score matrix: per layer batch × seq × (10·hidden + 4·intermediate) values
(norm inputs, q/k/v before and after rotary, attention output and its log-sum-exp, the SwiGLU
gate/up/activation/product), at 4 bytes in fp32 and ~2.7 bytes under 16-bit autocast (the
residual stream and RMSNorm stay fp32), plus autocast's 16-bit copies of the linear weights,
plus the fp32 logits batch × seq × vocab × 4 (once more for a live teacher's, which run under
no_grad and keep no other activations). Measured on CPU Llamas with saved-tensor hooks: fp32
21.0·hidden per token-layer at intermediate 2.75·hidden (the formula: 21.0), bf16-mixed 56
bytes after its weight casts (formula: 56.7). Korthikanti et al. 2022 count 34·hidden bytes for a 4·hidden GELU MLP
at 16 bits with dropout masks; chunked / fused losses hold less than the full logits.
The teacher's weights count at its load precision.
"""

from __future__ import annotations

import torch
from torch import nn

ACT_BYTES = {"fp32": 4.0, "16": 2.7}  # bytes per saved activation value (see the module docstring)
NF4_BYTES = 0.5 + 4 / 64  # 4-bit weight + one fp32 absmax per 64 weights
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1, "none": 0}
LOAD_BYTES = {
    "fp32": 4,
    "32": 4,
    "bf16": 2,
    "fp16": 2,
    "16": 2,
    "int8": 1,
    "8bit": 1,
    "nf4": NF4_BYTES,
    "4bit": NF4_BYTES,
    "int4": NF4_BYTES,
}


def unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())  # parameters() already yields a tied weight once


def decoder_linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the linear layers other than the LM head: what QLoRA / 8-bit loading quantize."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen, out = set(), []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not head and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(module.weight)
    return out


def nbytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()


def model_bytes(
    model: nn.Module, linear_bytes_per_param: float | None = None, other_bytes_per_param: float | None = None
) -> float:
    """Parameter bytes; with ``linear_bytes_per_param`` the decoder linear weights count at that
    rate (quantized loading) and the rest at ``other_bytes_per_param`` (or their own dtype)."""
    if linear_bytes_per_param is None:
        return float(sum(nbytes(p) for p in unique_params(model)))
    linear = {id(p) for p in decoder_linear_weights(model)}
    total = 0.0
    for p in unique_params(model):
        if id(p) in linear:
            total += p.numel() * linear_bytes_per_param
        else:
            total += p.numel() * (other_bytes_per_param or p.element_size())
    return total


def model_dims(model: nn.Module) -> tuple[int, int, int]:
    """hidden, intermediate (MLP width; GPT-2's n_inner defaults to 4·hidden) and layers."""
    config = model.config
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    return hidden, inter, layers


def estimate_memory(
    student: nn.Module,
    teacher: nn.Module | None = None,
    *,
    batch_size: int,
    seq_len: int,
    precision: str = "32-true",
    optimizer: str = "adamw",
    quant: str = "none",
    lora_trainable: int | None = None,
    teacher_load_in: str | None = None,
    vocab_size: int,
) -> dict:
    """Bytes held during training: params, grads, optimizer, activations, teacher, total."""
    optimizer = optimizer.lower()
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}: one of {', '.join(OPTIMIZER_STATES)}")
    quant = str(quant or "none").lower()
    trainable = [p for p in unique_params(student) if p.requires_grad]
    out = {}
    if quant.startswith("qlora"):
        out["params"] = model_bytes(student, NF4_BYTES)
        base = {id(w) for w in decoder_linear_weights(student)}
        trainable = [p for p in trainable if id(p) not in base]
    else:
        out["params"] = model_bytes(student)
    grads = sum(nbytes(p) for p in trainable)
    states = sum(
        OPTIMIZER_STATES[optimizer] * nbytes(p) + (4 if optimizer in ("adam", "adamw") else 0) for p in trainable
    )
    if lora_trainable:  # adapters not yet in the student: fp32 (their few 4-byte step tensors ignored)
        out["params"] += 4 * lora_trainable
        grads += 4 * lora_trainable
        states += OPTIMIZER_STATES[optimizer] * 4 * lora_trainable
    out["grads"], out["optimizer"] = float(grads), float(states)
    out["activations"] = activation_bytes(
        student, batch_size, seq_len, precision, vocab_size, live_teacher=teacher is not None
    )
    if quant.startswith("qat"):  # fake-quantized weight copies saved for backward, one per linear
        out["activations"] += float(sum(nbytes(w) for w in decoder_linear_weights(student)))
    out["teacher"] = teacher_bytes(teacher, teacher_load_in) if teacher is not None else 0.0
    out["total"] = sum(out.values())
    return out


def activation_bytes(
    model: nn.Module, batch_size: int, seq_len: int, precision: str, vocab_size: int, live_teacher: bool = False
) -> float:
    hidden, inter, layers = model_dims(model)
    mixed = str(precision) in ("bf16-mixed", "16-mixed")
    tokens = batch_size * seq_len
    saved = tokens * (10 * hidden + 4 * inter) * layers * ACT_BYTES["16" if mixed else "fp32"]
    casts = 2 * sum(w.numel() for w in decoder_linear_weights(model)) if mixed else 0
    logits = tokens * vocab_size * 4 * (2 if live_teacher else 1)
    return float(saved + casts + logits)


def teacher_bytes(teacher: nn.Module, load_in: str | None) -> float:
    """The frozen teacher's weights at its load precision. A float precision (fp32, bf16) casts every
    parameter; 8-bit and 4-bit loading cover the decoder linear weights only, and the embeddings,
    norms and head stay in the dtype they were loaded in (as ``quantize_teacher`` leaves them)."""
    if load_in is None:
        return model_bytes(teacher)
    rate = LOAD_BYTES.get(str(load_in).lower())
    if rate is None:
        raise ValueError(f"unknown teacher load precision {load_in!r}: one of {', '.join(LOAD_BYTES)}")
    return model_bytes(teacher, rate, rate if rate >= 2 else None)


def format_estimate(d: dict) -> str:
    """A short table for the log."""
    width = max(len(k) for k in d)
    rows = [f"{k.ljust(width)}  {v / 2**20:10.1f} MiB" for k, v in d.items() if k != "total"]
    rule = "-" * (width + 16)
    return "\n".join(
        ["estimated training memory", *rows, rule, f"{'total'.ljust(width)}  {d['total'] / 2**20:10.1f} MiB"]
    )
