"""FLOPs per trained token and the time a token budget takes: what ``plan=true`` prints beside memory.

Model FLOPs as in PaLM (Chowdhery et al. 2022, appendix B), the convention MFU is quoted in: a matmul
weight of N elements costs 2·N per token forward and 4·N backward (input and weight gradients), so
6·N for a trained weight; a frozen weight still passes gradients to its input (2·N forward + 2·N
backward: LoRA's and QLoRA's base, 4·N). Attention's score and value matmuls add 4·layers·seq·(heads ×
head_dim) per token forward (12· with backward), counted over the whole sequence as PaLM does. A
live teacher runs forward only; a cached one costs nothing here (its FLOPs were spent writing the
cache). Embedding lookups, norms, softmax and the loss are left out (under 1% at these sizes). An
MoE counts the experts a token visits (``num_experts_per_tok`` of ``num_experts``).

Time: tokens × FLOPs per token / (devices × peak FLOP/s × MFU). The defaults (``configs/train.yaml``,
``planning``): 989 TFLOP/s, an H100 SXM's dense bf16 peak (NVIDIA H100 datasheet; 1,979 is with 2:4
sparsity); MFU 0.4, Llama 3's 38–43 % on 16k H100s (Dubey et al. 2024, table 4).
"""

from __future__ import annotations

from torch import nn


def _experts(module: nn.Module) -> int:
    config = getattr(module, "config", None)
    return getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 1


def matmul_weights(model: nn.Module) -> tuple[float, float]:
    """(trained, frozen) matmul weights a token passes through: every 2-D weight but the embeddings' (linears,
    GPT-2's Conv1D, MoE routers; the LM head too, also when tied to the embeddings) and the fused expert
    tensors of an MoE scaled to the experts a token visits."""
    config = getattr(model, "config", None)
    top_k = getattr(config, "num_experts_per_tok", None) or 1
    experts = _experts(model)
    trained = frozen = 0.0
    seen = set()
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if "gate_up_proj" in own and "down_proj" in own:
            params, share = [own["gate_up_proj"], own["down_proj"]], top_k / experts  # [E, ...] expert tensors
        elif isinstance(module, nn.Linear) or (
            "weight" in own and own["weight"].ndim == 2 and not isinstance(module, nn.Embedding)
        ):  # linears, GPT-2's Conv1D, MoE routers
            params, share = [own.get("weight", getattr(module, "weight", None))], 1.0
        else:
            continue
        for p in params:
            if id(p) in seen:  # an LM head tied to the embeddings is a matmul of its own: counted by module
                continue
            seen.add(id(p))
            if p.requires_grad:
                trained += p.numel() * share
            else:
                frozen += p.numel() * share
    return trained, frozen


def attention_width(model: nn.Module) -> tuple[int, int]:
    """(layers, heads × head_dim) of the model's attention."""
    c = model.config
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    hidden = getattr(c, "hidden_size", None) or c.n_embd
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    return layers, heads * head_dim


def forward_flops_per_token(model: nn.Module, seq_len: int) -> float:
    trained, frozen = matmul_weights(model)
    layers, width = attention_width(model)
    return 2 * (trained + frozen) + 4 * layers * seq_len * width


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward + backward of the student: 6·N for trained weights, 4·N for frozen ones (LoRA's base)."""
    trained, frozen = matmul_weights(model)
    layers, width = attention_width(model)
    return 6 * trained + 4 * frozen + 12 * layers * seq_len * width


def distillation_flops_per_token(student: nn.Module, teacher: nn.Module | None, seq_len: int) -> dict[str, float]:
    """FLOPs per training token: the student's step and a live teacher's forward (None: no teacher run)."""
    out = {"student": train_flops_per_token(student, seq_len)}
    out["teacher"] = forward_flops_per_token(teacher, seq_len) if teacher is not None else 0.0
    out["total"] = out["student"] + out["teacher"]
    return out


def training_time(tokens: float, flops_per_token: float, devices: int, peak_tflops: float, mfu: float) -> dict:
    """Seconds and device-hours for ``tokens`` at ``mfu`` of ``peak_tflops`` on each of ``devices``."""
    seconds = tokens * flops_per_token / (devices * peak_tflops * 1e12 * mfu)
    return {"seconds": seconds, "device_hours": seconds * devices / 3600}
