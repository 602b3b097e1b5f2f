"""DDP throughput: 2 processes vs 1, distilling the quickstart student, on CPU (gloo) or GPUs.

Both arms run ``distill``'s DistillationModule (live teacher, fused KD objective) under a Lightning
Trainer; the reference is the same thing in one process, measured in the same run (interleaved
rounds, medians). Each arm is a fresh subprocess (Lightning's DDP launcher re-runs this script for
rank 1). Each rank keeps the per-process batch (weak scaling, how DDP is used), so tokens/s counts
the tokens of every rank. Threads: the machine's cores are split between the processes (one
process: all cores, and also 1 thread; two: half each), so every arm uses the same CPU.

    python benchmarks/ddp_throughput.py                       # quickstart sizes, 2 rounds
    python benchmarks/ddp_throughput.py --steps 5 --layers 2 --hidden 64 --rounds 1   # quick check

Prints ``RATIO ddp2/single`` (wall-clock tokens/s) and the same per CPU-second (every thread of
every rank), which other jobs on the machine disturb far less; the ideal is 2.0 with a device per process. On a machine with only
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

RESULT = re.compile(r"^TOKENS_PER_S (\S+) CPU_S (\S+)$", re.M)


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
        """Wall time and CPU time (all threads, summed over ranks) of the steps after warm-up."""

        def __init__(self):
            self.start, self.cpu, self.steps = None, None, 0

        def on_train_batch_end(self, trainer, *_):
            if trainer.global_step == args.warmup:
                self.start, self.cpu = time.perf_counter(), time.process_time()
            elif trainer.global_step > args.warmup:
                self.steps += 1

        def on_train_end(self, trainer, *_):
            wall = time.perf_counter() - self.start
            cpu = torch.tensor([time.process_time() - self.cpu], dtype=torch.float64)
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(cpu)
            if trainer.is_global_zero:
                tokens = self.steps * args.batch * args.seq * trainer.world_size
                print(f"TOKENS_PER_S {tokens / wall:.1f} CPU_S {cpu.item() / tokens * 1e3:.4f}", flush=True)

    torch.manual_seed(0)
    teacher = build_llama(args.vocab, args.hidden, args.layers, args.heads, max_seq_len=args.seq)
    student = every_other_layer(teacher)
    total = args.warmup + args.steps
    module = DistillationModule(
        student,
        Objective({"forward_kl": 1.0, "ce": 0.5}),
        args.vocab,
        teacher=Teacher(teacher),
        lr=1e-4,
        max_steps=total,
    )
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, args.vocab, (total * args.batch * args.devices, args.seq + 1), generator=g)
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=args.batch)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision=args.precision,
        max_steps=total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[StepTimer()],
    )
    trainer.fit(module, train_dataloaders=loader)


def measure(args, devices: int, threads: int) -> tuple[float, float]:
    """(tokens/s, CPU-seconds per 1k tokens) of one fresh run."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--devices",
        str(devices),
        "--threads",
        str(threads),
        *[f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "devices", "threads", "rounds")],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    found = RESULT.search(proc.stdout)
    if proc.returncode != 0 or not found:
        sys.exit(f"worker with {devices} process(es) failed:\n{proc.stderr[-3000:]}")
    return float(found.group(1)), float(found.group(2))


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
    print(
        f"sizes: teacher {args.layers}L x {args.hidden}, student {args.layers // 2}L, vocab {args.vocab}, "
        f"batch {args.batch}x{args.seq} per process, precision {args.precision}, {os.cpu_count()} cores"
    )
    cores = os.cpu_count() or 1
    per_rank = args.threads or max(1, cores // 2)
    # The single-process reference gets all cores; with 1 thread too, because intra-op threads
    # collapse when other jobs share the cores (their barriers wait on descheduled threads).
    arms = {
        f"1 process x {args.threads or cores} threads": (1, args.threads or cores),
        "1 process x 1 thread": (1, 1),
        f"ddp 2 processes x {per_rank} thread(s)": (2, per_rank),
    }
    runs = {k: [] for k in arms}
    cpu = {k: [] for k in arms}
    for r in range(args.rounds):
        for name, (devices, threads) in arms.items():
            rate, cpu_per_k = measure(args, devices, threads)
            runs[name].append(rate)
            cpu[name].append(cpu_per_k)
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k}: {v[-1]:,.0f} tokens/s ({cpu[k][-1]:.3f} CPU-s/1k tokens)" for k, v in runs.items()),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ddp = list(arms)[-1]
    single = max(list(arms)[:2], key=med.get)  # the better single-process setting is the reference
    for name, value in med.items():
        print(
            f"{name:32s} {value:9,.0f} tokens/s   ratio to reference {value / med[single]:.3f}   "
            f"{med_cpu[name]:.3f} CPU-s per 1k tokens"
        )
    print(f"RATIO ddp2/single = {med[ddp] / med[single]:.3f} (reference: {single})")
    # Tokens per CPU-second: when both arms keep all cores busy this is the idle-machine throughput
    # ratio, and it moves far less than wall time when other jobs share the cores.
    best_cpu = min(med_cpu[k] for k in list(arms)[:2])
    print(f"RATIO ddp2/single per CPU-second = {best_cpu / med_cpu[ddp]:.3f}")


if __name__ == "__main__":
    main()
