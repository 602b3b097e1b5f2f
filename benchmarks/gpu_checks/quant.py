"""Quantization on the device: QLoRA (bitsandbytes NF4 base) against bf16 LoRA, the 4-bit teacher against
the bf16 one, and the step-time overhead of int4 QAT (torchao fake quantization). Each needs a package
that the GPU machine lacks unless its wheel travelled with the tree: without it the check is skipped."""

from __future__ import annotations

import torch

from .common import (
    STUDENT,
    TEACHER,
    Context,
    KDStep,
    Peak,
    build,
    finite_loss,
    median_seconds,
    ratio,
    require,
    setup_for,
    tensor_bytes,
    token_batches,
)

LORA = dict(r=16, alpha=32)  # a common LoRA setting; the adapters are ~0.5% of the 1B student


def ce_objective():
    """The student's own step (no teacher): CE through the fused LM head, the head's logits never built."""
    from distill.losses.objective import Objective

    return Objective({"ce": 1.0}, fused_linear=True)


def lora_variant(ctx: Context, qlora: bool, batch: int) -> dict:
    """A bf16 student with LoRA adapters, its base linears then 4-bit (NF4, double quantization) for QLoRA;
    its stored bytes, the memory model's figure for them, and the CE step's speed and peak."""
    from distill.quant.memory import estimate_memory
    from distill.quant.quantized_teacher import model_memory_bytes
    from distill.student.lora import apply_lora

    student = apply_lora(build(ctx, STUDENT, torch.bfloat16), **LORA).train()
    vocab = int(student.config.vocab_size)
    objective = ce_objective()
    setup = setup_for(ctx, vocab, batch, objective, quant="qlora" if qlora else "none")
    plan = estimate_memory(student, None, setup)  # planned on the unquantized model, as plan=true does
    if qlora:
        from distill.quant.qlora import QLoRAPlugin

        QLoRAPlugin(precision="bf16-mixed", device=ctx.device.type, compute_dtype="bfloat16").quantize(student)
    ctx.free()
    allocated = float(torch.cuda.memory_allocated()) if ctx.cuda else None
    step = KDStep(ctx, student, None, objective, token_batches(ctx, vocab, batch, 2), vocab, lr=1e-4)
    step()  # AdamW's states for the adapters
    with Peak(ctx, resident=model_memory_bytes(student) + tensor_bytes(step.optimizer)) as peak:
        seconds = median_seconds(ctx, step)
    return {
        "weight_bytes": float(model_memory_bytes(student)),
        "plan_weight_bytes": plan["student weights"],
        "allocated_after_build_bytes": allocated,
        "trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "step_peak_bytes": peak.bytes,
        "tokens_per_s": step.tokens() / seconds,
        "loss": finite_loss(step),
    }


def qlora_vs_lora(ctx: Context) -> dict:
    require("bitsandbytes", "QLoRA's 4-bit base layers")
    batch = 2 if ctx.dry else 4
    lora = lora_variant(ctx, qlora=False, batch=batch)
    ctx.free()
    qlora = lora_variant(ctx, qlora=True, batch=batch)
    out = {"batch": batch, "seq_len": ctx.seq_len, "lora_r": LORA["r"]}
    out.update({f"lora_{k}": v for k, v in lora.items()})
    out.update({f"qlora_{k}": v for k, v in qlora.items()})
    out["weights_ratio"] = ratio(qlora["weight_bytes"], lora["weight_bytes"])
    out["step_peak_ratio"] = ratio(qlora["step_peak_bytes"], lora["step_peak_bytes"])
    out["tokens_per_s_ratio"] = ratio(qlora["tokens_per_s"], lora["tokens_per_s"])
    return out


@torch.no_grad()
def agreement(reference: torch.Tensor, logits: torch.Tensor) -> dict:
    """Top-1 agreement and mean KL(reference || quantized) per token, in float32."""
    ref, out = reference.float().log_softmax(-1), logits.float().log_softmax(-1)
    kl = (ref.exp() * (ref - out)).sum(-1).mean()
    return {"top1_agreement": float((ref.argmax(-1) == out.argmax(-1)).float().mean()), "kl_to_bf16": float(kl)}


def teacher_4bit(ctx: Context) -> dict:
    """The ~8B teacher loaded in bf16, then quantized in place to 4 bits (``teacher.load_in=4bit``,
    ``distill.quant.quantized_teacher``): stored bytes against the memory model, forward tokens/s, and how
    far its logits move from the bf16 teacher's."""
    require("bitsandbytes", "the 4-bit teacher's layers")
    from distill.quant.memory import teacher_bytes
    from distill.quant.quantized_teacher import model_memory_bytes, quantize_teacher

    model = build(ctx, TEACHER, torch.bfloat16).eval().requires_grad_(False)
    vocab = int(model.config.vocab_size)
    inputs = token_batches(ctx, vocab, 2, 1)[0][0]
    forward = torch.no_grad()(lambda: model(input_ids=inputs, use_cache=False).logits)
    out = {"batch": 2, "seq_len": ctx.seq_len, "plan_bf16_bytes": teacher_bytes(model, "bf16")}
    out["plan_4bit_bytes"] = teacher_bytes(model, "4bit")
    out["bf16_bytes"] = float(model_memory_bytes(model))
    out["bf16_tokens_per_s"] = inputs.numel() / median_seconds(ctx, forward)
    reference = forward()  # kept on the device: the comparison's float32 softmaxes are GiBs at 128k
    quantize_teacher(model, "4bit", device=ctx.device)
    ctx.free()
    out["4bit_bytes"] = float(model_memory_bytes(model))
    held = reference.numel() * reference.element_size()  # the bf16 logits kept for the comparison
    out["4bit_allocated_bytes"] = float(torch.cuda.memory_allocated()) - held if ctx.cuda else None
    out["4bit_tokens_per_s"] = inputs.numel() / median_seconds(ctx, forward)
    out.update(agreement(reference, forward()))
    out["bytes_ratio"] = ratio(out["4bit_bytes"], out["bf16_bytes"])
    out["4bit_over_plan"] = ratio(out["4bit_bytes"], out["plan_4bit_bytes"])
    out["speed_ratio"] = ratio(out["4bit_tokens_per_s"], out["bf16_tokens_per_s"])
    return out


def qat_int4(ctx: Context) -> dict:
    """The student's CE step with int4 weight / int8 activation fake quantization (``quant=qat_int8_int4``,
    torchao) against the same step without: the time QAT adds."""
    require("torchao", "QAT's fake quantization")
    from distill.quant.qat import QATPlugin

    batch = 2
    results = {}
    for name in ("plain", "qat"):
        student = build(ctx, STUDENT, torch.float32).train()
        if name == "qat":
            plugin = QATPlugin(precision="bf16-mixed", device=ctx.device.type, weight_bits=4, group_size=32)
            plugin.quantize(student)
        vocab = int(student.config.vocab_size)
        step = KDStep(ctx, student, None, ce_objective(), token_batches(ctx, vocab, batch, 2), vocab)
        seconds = median_seconds(ctx, step)
        results[name] = {"seconds_per_step": seconds, "tokens_per_s": step.tokens() / seconds}
        results[name]["loss"] = finite_loss(step)
        del student, step
        ctx.free()
    out = {"batch": batch, "seq_len": ctx.seq_len, "scheme": "int4 weights (group 32), int8 activations"}
    for name, r in results.items():
        out.update({f"{name}_{k}": v for k, v in r.items()})
    out["qat_step_overhead"] = ratio(results["qat"]["seconds_per_step"], results["plain"]["seconds_per_step"])
    return out
