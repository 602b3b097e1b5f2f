"""DDP throughput: 2 processes vs 1, distilling the quickstart student, on CPU (gloo) or GPUs.

Both arms run ``distill``'s DistillationModule (live teacher, fused KD objective) under a Lightning
Trainer; the reference is the same thing in one process, measured in the same run (interleaved
rounds, medians). Each arm is a fresh subprocess (Lightning's DDP launcher re-runs this script for
rank 1). Each rank keeps the per-process batch (weak scaling, how DDP is used), so tokens/s counts
the tokens of every rank. Threads: the machine's cores are split between the processes (one
process: all cores; two: half each), so both arms use the same CPU.

    python benchmarks/ddp_throughput.py                       # quickstart sizes, 2 rounds
    python benchmarks/ddp_throughput.py --steps 5 --layers 2 --hidden 64 --rounds 1   # quick check

Prints ``RATIO ddp2/single``; the ideal is 2.0 with a device per process. On a machine with only
as many cores as one process already uses (e.g. 2 CPU cores), expect about 1.0 or below: the two
processes share the same cores and add a gradient all-reduce per step.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

RESULT = re.compile(r"^TOKENS_PER_S (\S+)$", re.M)


def worker(args) -> None:
    """One measurement (this process is rank 0; Lightning starts the other ranks)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from distill.distillation import DistillationModule
    from distill.losses.objective import Objective
    from distill.student.prune import every_other_layer
    from distill.student.scratch import build_llama
    from distill.teacher.module import Teacher

    torch.set_num_threads(args.threads)

    class StepTimer(L.Callback):
        def __init__(self):
            self.start, self.steps = None, 0

        def on_train_batch_end(self, trainer, *_):
            if trainer.global_step == args.warmup:
                self.start = time.perf_counter()
            elif trainer.global_step > args.warmup:
                self.steps += 1

        def on_train_end(self, trainer, *_):
            if trainer.is_global_zero:
                tokens = self.steps * args.batch * args.seq * trainer.world_size
                print(f"TOKENS_PER_S {tokens / (time.perf_counter() - self.start):.1f}", flush=True)

    torch.manual_seed(0)
    teacher = build_llama(args.vocab, args.hidden, args.layers, args.heads, max_seq_len=args.seq)
    student = every_other_layer(teacher)
    total = args.warmup + args.steps
    module = DistillationModule(student, Objective({"forward_kl": 1.0, "ce": 0.5}), args.vocab,
                                teacher=Teacher(teacher), lr=1e-4, max_steps=total)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, args.vocab, (total * args.batch * args.devices, args.seq + 1), generator=g)
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=args.batch)
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices,
                        strategy="ddp" if args.devices > 1 else "auto", precision=args.precision,
                        max_steps=total, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, callbacks=[StepTimer()])
    trainer.fit(module, train_dataloaders=loader)


def measure(args, devices: int) -> float:
    threads = max(1, (os.cpu_count() or 1) // devices) if args.threads is None else args.threads
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--devices", str(devices), "--threads", str(threads),
           *[f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "devices", "threads", "rounds")]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    found = RESULT.search(proc.stdout)
    if proc.returncode != 0 or not found:
        sys.exit(f"worker with {devices} process(es) failed:\n{proc.stderr[-3000:]}")
    return float(found.group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="per process")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default=None, help="default: bf16 autocast where the hardware runs it")
    p.add_argument("--threads", type=int, default=None, help="per process; default: cores / processes")
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.precision is None:
        from distill.cli.resolvers import auto_precision

        args.precision = auto_precision(args.accelerator)
    if args.worker:
        return worker(args)
    print(f"sizes: teacher {args.layers}L x {args.hidden}, student {args.layers // 2}L, vocab {args.vocab}, "
          f"batch {args.batch}x{args.seq} per process, precision {args.precision}, {os.cpu_count()} cores")
    runs = {"1 process": [], "ddp, 2 processes": []}
    for r in range(args.rounds):
        runs["1 process"].append(measure(args, 1))
        runs["ddp, 2 processes"].append(measure(args, 2))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in runs.items()) + " tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    for name, value in med.items():
        print(f"{name:20s} {value:9,.0f} tokens/s   ratio to 1 process {value / med['1 process']:.3f}")
    print(f"RATIO ddp2/single = {med['ddp, 2 processes'] / med['1 process']:.3f}")


if __name__ == "__main__":
    main()
