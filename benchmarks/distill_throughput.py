"""Distillation step throughput vs. the unavoidable work, at quickstart sizes.

Reference ("unavoidable"): a plain PyTorch loop doing what no distillation framework can
skip: the teacher's forward (no_grad) plus the student's CE training step (forward,
backward, AdamW). Measured: ``distill``'s real DistillationModule + Objective under a Lightning
Trainer, and a naive (unfused, full-vocab float32) KL for comparison. All in one process,
interleaved rounds, medians reported. Prints ratios; the goal is framework/reference >= 0.85.

    python benchmarks/distill_throughput.py            # quickstart sizes
    python benchmarks/distill_throughput.py --steps 10 --rounds 1 --layers 2 --hidden 64   # quick check
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from distill.cli.resolvers import auto_precision
from distill.distillation import DistillationModule
from distill.losses.divergences import forward_kl
from distill.losses.objective import Objective
from distill.student.prune import every_other_layer
from distill.student.scratch import build_llama
from distill.teacher.module import Teacher


class StepTimer(L.Callback):
    """Wall time of the steps after ``warmup`` (Lightning's own loop included)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.steps += 1

    def on_train_end(self, *_):
        self.elapsed = time.perf_counter() - self.start


def make_models(args):
    torch.manual_seed(0)
    teacher = build_llama(args.vocab, args.hidden, args.layers, args.heads, max_seq_len=args.seq)
    return teacher, every_other_layer(teacher)


def batches(args, n):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, args.vocab, (n * args.batch, args.seq + 1), generator=g)


def plain_loop(args, kl: bool) -> float:
    """tokens/s of a hand-written loop; kl=False is the reference, kl=True adds a naive full-vocab KL."""
    teacher, student = make_models(args)
    teacher.eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95))
    data = batches(args, args.warmup + args.steps)
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            start = time.perf_counter()
        block = data[i * args.batch : (i + 1) * args.batch]
        x, y = block[:, :-1], block[:, 1:]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                t = teacher(input_ids=x, use_cache=False).logits
            s = student(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(s.float().flatten(0, 1), y.flatten())
        if kl:
            loss = 0.5 * loss + forward_kl(s, t, 1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return args.steps * args.batch * args.seq / (time.perf_counter() - start)


def framework(args) -> float:
    teacher, student = make_models(args)
    module = DistillationModule(
        student,
        Objective({"forward_kl": 1.0, "ce": 0.5}),
        args.vocab,
        teacher=Teacher(teacher),
        lr=1e-4,
        max_steps=args.warmup + args.steps,
    )
    data = batches(args, args.warmup + args.steps)
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=args.batch)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.steps * args.batch * args.seq / timer.elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default=auto_precision("cpu"))
    args = p.parse_args()
    print(
        f"sizes: teacher {args.layers}L x {args.hidden}, student {args.layers // 2}L, vocab {args.vocab}, "
        f"batch {args.batch}x{args.seq}, precision {args.precision}, threads {torch.get_num_threads()}"
    )
    runs = {"reference (student step + teacher fwd)": [], "distill (Lightning + fused KD)": [], "naive KL loop": []}
    for r in range(args.rounds):
        runs["reference (student step + teacher fwd)"].append(plain_loop(args, kl=False))
        runs["distill (Lightning + fused KD)"].append(framework(args))
        runs["naive KL loop"].append(plain_loop(args, kl=True))
        print(f"round {r + 1}: " + ", ".join(f"{v[-1]:,.0f}" for v in runs.values()) + " tokens/s")
    med = {k: statistics.median(v) for k, v in runs.items()}
    ref = med["reference (student step + teacher fwd)"]
    for name, value in med.items():
        print(f"{name:42s} {value:9,.0f} tokens/s   ratio to reference {value / ref:.3f}")
    print(f"RATIO distill/reference = {med['distill (Lightning + fused KD)'] / ref:.3f} (goal >= 0.85)")


if __name__ == "__main__":
    main()
