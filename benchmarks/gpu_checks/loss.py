"""The fused LM-head loss against the naive one at a 128k vocabulary: peak memory and time on the device.

The step functions and inputs are ``benchmarks/fused_linear_memory.py``'s (the CPU version of this
comparison): naive = both heads' logits materialized, then forward KL + CE with autograd; fused =
``distill.losses.fused_linear.fused_linear_loss`` (chunks, gradients in the forward); compiled = the
fused loss with the compiled chunk kernels (``loss.compile``; Triton on CUDA). Here all variants run in
one process, one after the other, each peak measured by the CUDA allocator above what was allocated
before it (the inputs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .common import STUDENT, TEACHER, Context, Peak, median_seconds, ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the CPU benchmark's functions
import fused_linear_memory as flm  # noqa: E402


def loss_args(ctx: Context) -> argparse.Namespace:
    """The CPU benchmark's arguments at the student's and teacher's widths and the real vocabulary:
    8,192 tokens (4 rows of 2,048) in bf16 on CUDA; toy sizes in dry mode."""
    student, teacher = ctx.config(STUDENT), ctx.config(TEACHER)
    tokens = 4 * ctx.seq_len
    return flm.parse_args(
        [
            f"--tokens={tokens}",
            f"--hidden={student.hidden_size}",
            f"--teacher-hidden={teacher.hidden_size}",
            f"--vocab={student.vocab_size}",
            "--dtype=bfloat16",
            "--chunk-size=256",
        ]
    )


def device_inputs(ctx: Context, args) -> list[torch.Tensor]:
    h, w, th, tw, y = flm.make_inputs(args)  # generated on the CPU: the same values as the CPU benchmark
    leaf = lambda t: t.detach().to(ctx.device).requires_grad_(True)
    return [leaf(h), leaf(w), th.to(ctx.device), tw.to(ctx.device), y.to(ctx.device)]


def run_variant(ctx: Context, args, inputs, step) -> tuple[dict, dict]:
    """Peak (above the inputs) and median time of one variant, and its loss and gradients."""
    h, w = inputs[0], inputs[1]

    def once():
        h.grad = w.grad = None
        return step(args, *inputs)

    once()  # warm-up (the compiled variant compiles here)
    h.grad = w.grad = None
    base = float(torch.cuda.memory_allocated()) if ctx.cuda else 0.0
    with Peak(ctx) as peak:
        loss = step(args, *inputs)
    values = {"loss": loss.float().cpu(), "grad_h": h.grad.float().cpu(), "grad_w": w.grad.float().cpu()}
    seconds = median_seconds(ctx, once, warmup=0, steps=1 if ctx.dry else 3)
    return {"peak_bytes": peak.bytes - base, "seconds": seconds}, values


def fused_vs_naive(ctx: Context) -> dict:
    args = loss_args(ctx)
    inputs = device_inputs(ctx, args)
    variants = {"naive": flm.naive_step, "fused": flm.fused_step}
    if ctx.dry:
        skipped = "not run in dry mode (torch.compile takes longer than the whole dry run)"
    else:
        skipped = None
        variants["compiled"] = flm.compiled_step
    results, values = {}, {}
    for name, step in variants.items():
        results[name], values[name] = run_variant(ctx, args, inputs, step)
        if ctx.cuda:
            torch.cuda.empty_cache()
    out = {
        "tokens": args.tokens,
        "hidden": args.hidden,
        "teacher_hidden": args.teacher_hidden,
        "vocab": args.vocab,
        "dtype": args.dtype,
        "chunk_size": args.chunk_size,
    }
    for name, r in results.items():
        out[f"{name}_peak_bytes"], out[f"{name}_seconds"] = r["peak_bytes"], r["seconds"]
        if name != "naive":
            out[f"{name}_peak_over_naive"] = ratio(r["peak_bytes"], results["naive"]["peak_bytes"])
            out[f"{name}_time_over_naive"] = ratio(r["seconds"], results["naive"]["seconds"])
            for key in ("loss", "grad_h", "grad_w"):
                out[f"{name}_rel_err_{key}"] = flm.rel_err(values[name][key], values["naive"][key])
    if skipped:
        out["compiled"] = skipped
    return out
