"""Step throughput of every objective and teacher backend vs plain student training (CE only).

Goal (issue 3): with a top-64 cache a distillation step runs at >= 0.9 x the tokens/s of
plain student training. Every row is the real DistillationModule under a Lightning Trainer
on the same student, batches and steps: the student alone (CE), the top-k cache (a real
cache written by ``write_teacher_cache``, memory-mapped, looked up by packed-row index) and
the live teacher with each objective preset. Rounds are interleaved so machine noise hits
every row alike; medians are printed as ratios. Asserts nothing.

    python benchmarks/objective_throughput.py                         # quickstart sizes, 3 rounds
    python benchmarks/objective_throughput.py --rows cache            # only student alone vs cache
    python benchmarks/objective_throughput.py --steps 10 --rounds 1 --layers 2 --hidden 64   # quick check
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

from distill.cli.resolvers import auto_precision
from distill.distillation import DistillationModule
from distill.losses.objective import Objective
from distill.teacher.cache import CachedTeacher, TeacherCache
from distill.teacher.cache_writer import write_teacher_cache
from distill.teacher.module import Teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_throughput import StepTimer, batches, make_models  # noqa: E402 (shared benchmark pieces)


def run(args, data, teacher_backend, objective: Objective) -> float:
    _, student = make_models(args)
    module = DistillationModule(
        student, objective, args.vocab, teacher=teacher_backend, lr=1e-4, max_steps=args.warmup + args.steps
    )
    if isinstance(teacher_backend, Teacher):
        objective.bind(student, teacher_backend.model)
    rows = torch.arange(len(data))
    loader = DataLoader(
        TensorDataset(data[:, :-1], data[:, 1:], rows),
        batch_size=args.batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
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


# The live-teacher rows: the loss presets of configs/loss/ (weights as there, CE 0.5 everywhere).
LIVE = {
    "forward_kl": dict(weights={"forward_kl": 1.0, "ce": 0.5}),
    "reverse_kl": dict(weights={"reverse_kl": 1.0, "ce": 0.5}),
    "jsd": dict(weights={"jsd": 1.0, "ce": 0.5}),
    "tvd": dict(weights={"tvd": 1.0, "ce": 0.5}),
    "hidden": dict(weights={"forward_kl": 1.0, "ce": 0.5, "hidden": 1.0}, hidden={"metric": "cosine"}),
    "gkd": dict(weights={"jsd": 1.0, "ce": 0.5}, on_policy={"lmbda": 0.5, "max_new_tokens": 32}),
}


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
    p.add_argument("--rows", default="cache," + ",".join(LIVE), help="comma list of: cache " + " ".join(LIVE))
    args = p.parse_args()
    wanted = args.rows.split(",")
    teacher, _ = make_models(args)
    data = batches(args, args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        write_teacher_cache(
            teacher,
            {"train": data.numpy()},
            tmp,
            top_k=args.top_k,
            vocab_size=args.vocab,
            keys={"teacher_key": "bench", "tokenizer_key": "bench", "data_key": "bench"},
            trainer_kwargs={"accelerator": "cpu", "precision": args.precision},
            progress_bar=False,
        )
        cache = CachedTeacher(TeacherCache(tmp))
        print(
            f"sizes: teacher {args.layers}L x {args.hidden}, student {args.layers // 2}L, vocab {args.vocab}, "
            f"batch {args.batch}x{args.seq}, top-{args.top_k} ({cache.cache.bytes_per_token} bytes/token, "
            f"tail={args.tail}), precision {args.precision}, threads {torch.get_num_threads()}"
        )
        rows = {"student alone (CE only)": lambda: run(args, data, None, Objective({"ce": 1.0}))}
        if "cache" in wanted:
            rows[f"top-{args.top_k} cache, forward_kl"] = lambda: run(
                args, data, cache, Objective({"forward_kl": 1.0, "ce": 0.5}, tail=args.tail)
            )
        for name in (n for n in wanted if n in LIVE):
            rows[f"live teacher, {name}"] = lambda name=name: run(args, data, Teacher(teacher), Objective(**LIVE[name]))
        runs = {n: [] for n in rows}
        for r in range(args.rounds):
            for name, fn in rows.items():
                runs[name].append(fn())
            print(f"round {r + 1}: " + ", ".join(f"{v[-1]:,.0f}" for v in runs.values()) + " tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ref = med["student alone (CE only)"]
    for name, value in med.items():
        print(f"{name:34s} {value:9,.0f} tokens/s   ratio to student alone {value / ref:.3f}")
    if "cache" in wanted:
        print(f"RATIO cache/student-alone = {med[f'top-{args.top_k} cache, forward_kl'] / ref:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
