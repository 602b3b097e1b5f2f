"""The KD training step at real shapes: speed and MFU (fused LM-head loss, as a run at a 128k vocabulary
would use), the measured peak against the memory model's plan (both loss paths), and FSDP2 on one GPU
with the teacher sharded (a sanity check: the sharded step computes the unsharded loss)."""

from __future__ import annotations

import tempfile

import torch

from .common import (
    KD,
    STUDENT,
    TEACHER,
    Context,
    KDStep,
    Peak,
    Skip,
    build,
    device_info,
    finite_loss,
    median_seconds,
    planned_batch,
    ratio,
    setup_for,
    tensor_bytes,
    token_batches,
)


def kd_models(ctx: Context):
    """The ~1B student (fp32 master weights, bf16 autocast) and the ~8B teacher loaded in bf16."""
    teacher = build(ctx, TEACHER, torch.bfloat16)
    student = build(ctx, STUDENT, torch.float32).train()
    return student, teacher


def plan_and_measure(ctx: Context, fused: bool, dry_batch: int) -> tuple[dict, KDStep, float]:
    """Builds the models, plans the micro-batch and measures the peak of steady-state steps against the
    plan; returns (numbers, the step, median seconds per step). If the planned batch runs out of memory
    (the plan underestimated), halves it until one fits and says so (``oom_at_batch``)."""
    from distill.losses.objective import Objective

    student, teacher = kd_models(ctx)
    objective = Objective(KD, fused_linear=fused)
    probe = setup_for(ctx, int(student.config.vocab_size), 1, objective, teacher_load_in="bf16")
    batch, oom = planned_batch(ctx, student, teacher, probe, dry_batch), []
    while True:
        try:
            return measure(ctx, student, teacher, objective, batch, oom)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            oom.append(batch)
        # outside the except block: its traceback no longer holds the failed step's tensors
        student.zero_grad(set_to_none=True)
        ctx.free()
        batch //= 2


def measure(ctx: Context, student, teacher, objective, batch: int, oom: list[int]) -> tuple[dict, KDStep, float]:
    from distill.losses import compiled
    from distill.quant.memory import estimate_memory

    vocab = int(student.config.vocab_size)
    plan = estimate_memory(student, teacher, setup_for(ctx, vocab, batch, objective, teacher_load_in="bf16"))
    step = KDStep(ctx, student, teacher, objective, token_batches(ctx, vocab, batch, 2), vocab)
    for _ in range(ctx.warmup):  # compiles the loss kernels (loss.compile=auto at 128k) and makes AdamW's states
        step()
    with Peak(ctx, resident=tensor_bytes(student, teacher, step.optimizer)) as peak:
        seconds = median_seconds(ctx, step, warmup=0)
    numbers = {
        "batch": batch,
        "oom_at_batch": oom,
        "seq_len": ctx.seq_len,
        "tokens_per_step": step.tokens(),
        "loss_path": "fused LM head" if objective.fused_linear else "chunked logits",
        "loss": finite_loss(step),
        "peak_bytes": peak.bytes,
        "plan_bytes": plan["total"],
        "peak_over_plan": ratio(peak.bytes, plan["total"]),
        "plan_parts_bytes": {k: v for k, v in plan.items() if v and k != "total"},
        # compile errors of the loss kernels (loss.compile=auto at 128k), after which they ran eager
        "loss_compile_errors": list(getattr(compiled, "_failed", [])),
    }
    return numbers, step, seconds


def kd_step(ctx: Context) -> dict:
    """Tokens/s and MFU of the KD step (student ~1B, teacher ~8B, sequence 2,048, bf16 autocast)."""
    from distill.eval.flops import distillation_flops_per_token

    numbers, step, seconds = plan_and_measure(ctx, fused=True, dry_batch=2)
    flops = distillation_flops_per_token(step.student, step.teacher.model, ctx.seq_len)
    tokens_per_s = step.tokens() / seconds
    peak = device_info(ctx)["peak_bf16_flops"]
    return {
        **numbers,
        "seconds_per_step": seconds,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops["total"],
        "student_flops_per_token": flops["student"],
        "teacher_flops_per_token": flops["teacher"],
        "achieved_flops": flops["total"] * tokens_per_s,
        "mfu": ratio(flops["total"] * tokens_per_s, peak),
    }


def peak_vs_plan(ctx: Context) -> dict:
    """The same step on the chunked-logits loss path (full student and teacher logits): the measured peak
    against the plan (the fused path's ratio is in ``kd_step``)."""
    numbers, _, seconds = plan_and_measure(ctx, fused=False, dry_batch=2)
    return {**numbers, "seconds_per_step": seconds}


def fsdp2_sharded_teacher(ctx: Context) -> dict:
    """FSDP2 (``distill.sharding``) on one process: student and teacher sharded over a mesh of one; the
    sharded step's loss must equal the plain model's loss on the same batch (the fused loss is refused
    under FSDP, so this is the logits path)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise Skip("torch.distributed is not available in this build")
    if dist.is_initialized():
        raise Skip("a process group is already initialized in this process")
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(f"{tmp}/store", 1)
        dist.init_process_group("nccl" if ctx.cuda else "gloo", store=store, rank=0, world_size=1)
        try:
            return sharded_step(ctx)
        finally:
            dist.destroy_process_group()


def sharded_step(ctx: Context) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    from distill.losses.objective import Objective
    from distill.sharding import shard_model, unsharded

    student, teacher = kd_models(ctx)
    vocab = int(student.config.vocab_size)
    objective = Objective(KD)
    batches = token_batches(ctx, vocab, 1, 2)
    step = KDStep(ctx, student, teacher, objective, batches, vocab)  # the optimizer is rebuilt after sharding
    with torch.no_grad():
        reference = float(step.loss(*batches[0]))
    mesh = init_device_mesh(ctx.device.type, (1,))
    shard_model(student, mesh)
    shard_model(teacher, mesh, reshard_root=True, what="the teacher")
    step = KDStep(ctx, student, teacher, objective, batches, vocab)
    with torch.no_grad():
        sharded = float(step.loss(*batches[0]))
    with Peak(ctx, resident=tensor_bytes(student, teacher)) as peak:
        seconds = median_seconds(ctx, step)
    gathered = unsharded(student)  # what the run evaluates and exports after training
    return {
        "loss_unsharded": reference,
        "loss_sharded": sharded,
        "loss_rel_diff": abs(sharded - reference) / max(abs(reference), 1e-12),
        "loss_after_steps": finite_loss(step),
        "seconds_per_step": seconds,
        "tokens_per_s": step.tokens() / seconds,
        "peak_bytes": peak.bytes,
        "gathered_params": sum(p.numel() for p in gathered.parameters()),
    }
