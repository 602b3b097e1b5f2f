"""Distilling from the offline top-k cache vs plain student training (CE only), quickstart sizes.

The goal (issue 3): with a top-64 cache a distillation step runs at >= 0.9 x the tokens/s
of plain student training. Both sides are the real DistillationModule under a Lightning
Trainer on the same student and batches; the cached side reads a real cache written by
``write_teacher_cache`` (memory-mapped shards, lookup by packed-row index) and adds the
sparse KL term. Also printed: the live full-vocabulary teacher, for scale. Interleaved
rounds, medians; prints ratios, asserts nothing.

    python benchmarks/cache_throughput.py                 # quickstart sizes, 3 rounds
    python benchmarks/cache_throughput.py --steps 10 --rounds 1 --layers 2 --hidden 64   # quick check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.callbacks.cache_writer import write_teacher_cache
from distill.cli.resolvers import auto_precision
from distill.distillation import DistillationModule
from distill.losses.objective import Objective
from distill.teacher.cache import CachedTeacher, TeacherCache
from distill.teacher.module import Teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_throughput import StepTimer, batches, make_models  # noqa: E402 (shared benchmark pieces)


def run(args, data, teacher_backend, weights) -> float:
    _, student = make_models(args)
    module = DistillationModule(student, Objective(weights, tail=args.tail), args.vocab, teacher=teacher_backend,
                                lr=1e-4, max_steps=args.warmup + args.steps)
    rows = torch.arange(len(data))
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:], rows), batch_size=args.batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=args.precision, max_steps=args.warmup + args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, callbacks=[timer])
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
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--tail", default="bucket")
    p.add_argument("--precision", default=auto_precision("cpu"))
    args = p.parse_args()
    teacher, _ = make_models(args)
    data = batches(args, args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        write_teacher_cache(teacher, {"train": data.numpy()}, tmp, top_k=args.top_k, vocab_size=args.vocab,
                            keys={"teacher_key": "bench", "tokenizer_key": "bench", "data_key": "bench"},
                            trainer_kwargs={"accelerator": "cpu", "precision": args.precision}, progress_bar=False)
        cache = CachedTeacher(TeacherCache(tmp))
        print(f"sizes: teacher {args.layers}L x {args.hidden}, student {args.layers // 2}L, vocab {args.vocab}, "
              f"batch {args.batch}x{args.seq}, top-{args.top_k} ({cache.cache.bytes_per_token} bytes/token, "
              f"tail={args.tail}), precision {args.precision}, threads {torch.get_num_threads()}")
        names = ("student alone (CE only)", f"distill from top-{args.top_k} cache", "distill from live teacher")
        runs = {n: [] for n in names}
        for r in range(args.rounds):
            runs[names[0]].append(run(args, data, None, {"ce": 1.0}))
            runs[names[1]].append(run(args, data, cache, {"forward_kl": 1.0, "ce": 0.5}))
            runs[names[2]].append(run(args, data, Teacher(teacher), {"forward_kl": 1.0, "ce": 0.5}))
            print(f"round {r + 1}: " + ", ".join(f"{v[-1]:,.0f}" for v in runs.values()) + " tokens/s")
    med = {k: statistics.median(v) for k, v in runs.items()}
    ref = med[names[0]]
    for name, value in med.items():
        print(f"{name:34s} {value:9,.0f} tokens/s   ratio to student alone {value / ref:.3f}")
    print(f"RATIO cache/student-alone = {med[names[1]] / ref:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
