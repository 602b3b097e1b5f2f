"""The distillation step against its floor as the vocabulary outgrows the hidden size.

The share of a KD step spent on logits grows with vocabulary / hidden (Llama-3: 128,256 / 4,096;
Qwen3-0.6B: 151,936 / 1,024), so a loss that is cheap at the quickstart's 4,096 / 256 can
dominate at real sizes. Per point (vocabulary × hidden; teacher ``--layers`` deep, student
half as deep, pruned from it), all in one process, rounds interleaved, medians printed:

- floor: a plain PyTorch loop doing only what no framework can skip: the teacher's forward
  (no_grad) and the student's CE training step (forward, backward, AdamW: fused, as ``distill``
  steps since issue 22, so the floor is the best plain loop; ``--plain-adamw default`` gives torch's
  per-parameter loop on CPU, which the issue's first floor used);
- student CE: the same loop without the teacher (the reference of the cached path);
- ``distill`` live: the real DistillationModule + Objective (forward KL + 0.5 CE) under a
  Lightning Trainer, logits path and fused-LM-head path (``loss.fused_linear``);
- ``distill`` cache: the same module reading a real top-64 cache (written by
  ``write_teacher_cache``, memory-mapped, looked up by row), logits and fused-LM-head paths;
- naive: the plain loop plus a full-vocabulary float32 KL with autograd;
- TRL: ``trl.experimental.gkd.GKDTrainer`` (λ = 0, β = 0: forward KL on the data, no
  sampling) on the same models, rows and optimizer, when ``trl`` is installed (the ``bench``
  extra); otherwise the row says why it is missing.

Goals (issue 22): live ≥ 0.92 × floor at every point, ≥ 1.6 × TRL at (8k, 256); cache ≥ 1.0 ×
student CE at every point. Prints ratios; asserts nothing.

    python benchmarks/vocab_scaling.py                                   # the three default points
    python benchmarks/vocab_scaling.py --points 8192x256:8x256 --rounds 3
    python benchmarks/vocab_scaling.py --points 4096x64:2x64 --steps 3 --warmup 1 --rounds 1   # quick check
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from distill.cli.resolvers import auto_precision
from distill.distillation import DistillationModule, adamw
from distill.losses.divergences import forward_kl
from distill.losses.objective import Objective
from distill.teacher.cache import CachedTeacher, TeacherCache
from distill.teacher.cache_writer import write_teacher_cache
from distill.teacher.module import Teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_throughput import make_models  # noqa: E402 (shared benchmark pieces)

# vocabulary x hidden : batch x sequence. Batches shrink with the vocabulary so that the naive
# row's full-vocabulary float32 tensors fit a 24 GiB machine (at 128k: 512 tokens x 128k x 4 B = 256 MiB each).
DEFAULT_POINTS = "8192x256:8x256,32768x512:4x256,131072x1024:2x256"
KD = {"forward_kl": 1.0, "ce": 0.5}


class Clock:
    """Wall and process CPU time of the steps after warm-up. On a shared machine the wall time of a
    row swings with other jobs; the process's CPU time (both threads) much less, so both are reported."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total, self.wall, self.cpu = warmup, total, None, None

    def step_done(self, step: int) -> None:  # step: optimizer steps taken so far
        if step == self.warmup:
            self.start = (time.perf_counter(), time.process_time())
        elif step == self.total:
            self.wall, self.cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]

    def rates(self, tokens: int) -> tuple[float, float]:
        return tokens / self.wall, tokens / self.cpu


class LightningClock(L.Callback):
    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_batch_end(self, trainer, *_):
        self.clock.step_done(trainer.global_step)


def parse_point(text: str) -> argparse.Namespace:
    size, shape = text.split(":")
    vocab, hidden = (int(v) for v in size.lower().split("x"))
    batch, seq = (int(v) for v in shape.lower().split("x"))
    return argparse.Namespace(vocab=vocab, hidden=hidden, batch=batch, seq=seq)


def plain_loop(args, data, teacher_forward: bool, naive_kl: bool = False) -> float:
    """tokens/s of a hand-written loop: the student's CE step, optionally after the teacher's forward,
    optionally with a naive full-vocabulary KL (autograd through float32 logits)."""
    teacher, student = make_models(args)
    teacher.eval().requires_grad_(False)
    params = [{"params": list(student.parameters())}]
    opt = (
        adamw(params, lr=1e-4, betas=(0.9, 0.95))
        if args.plain_adamw == "fused"
        else torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    )
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
    clock = Clock(args.warmup, args.total)
    for i in range(args.total):
        clock.step_done(i)
        block = data[i * args.batch : (i + 1) * args.batch]
        x, y = block[:, :-1], block[:, 1:]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            if teacher_forward:
                with torch.no_grad():
                    t = teacher(input_ids=x, use_cache=False).logits
            s = student(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(s.float().flatten(0, 1), y.flatten())
        if naive_kl:
            loss = 0.5 * loss + forward_kl(s, t, 1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    clock.step_done(args.total)
    return clock.rates(args.steps * args.batch * args.seq)


def framework(args, data, teacher, objective: Objective) -> float:
    """tokens/s of ``distill``'s DistillationModule under Lightning, as ``distill-train`` runs it."""
    _, student = make_models(args)
    module = DistillationModule(student, objective, args.vocab, teacher=teacher, lr=1e-4, max_steps=args.total)
    if isinstance(teacher, Teacher):
        objective.bind(student, teacher.model)
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:], torch.arange(len(data))), batch_size=args.batch)
    clock = Clock(args.warmup, args.total)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[LightningClock(clock)],
    )
    trainer.fit(module, train_dataloaders=loader)
    return clock.rates(args.steps * args.batch * args.seq)


def trl_gkd(args, data) -> float:
    """tokens/s of TRL's GKDTrainer at λ = 0 (no sampling), β = 0 (forward KL), same models and rows."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    teacher, student = make_models(args)

    clock = Clock(args.warmup, args.total)

    class Timer(TrainerCallback):
        def on_step_end(self, _args, state, _control, **_):
            clock.step_done(state.global_step)

    def collate(rows):  # the same packed rows, all tokens labelled, as the other rows train on
        ids = torch.stack([torch.as_tensor(r["input_ids"]) for r in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    # GKDTrainer needs a tokenizer for its pad id and generation config only; the rows are token ids already.
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, unk_token="<pad>")))
    tok.pad_token = "<pad>"
    with tempfile.TemporaryDirectory() as out:
        config = GKDConfig(
            output_dir=out,
            lmbda=0.0,
            beta=0.0,
            max_steps=args.total,
            per_device_train_batch_size=args.batch,
            learning_rate=1e-4,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            bf16=args.precision == "bf16-mixed",
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            train_dataset=Dataset.from_dict({"input_ids": data.tolist()}),
            data_collator=collate,
            processing_class=tok,
            callbacks=[Timer()],
        )
        trainer.train()
    # Its rows are seq + 1 tokens long and it shifts inside: seq predicted tokens per row, as for the others.
    return clock.rates(args.steps * args.batch * args.seq)


def trl_missing() -> str | None:
    try:
        import trl.experimental.gkd  # noqa: F401
    except ImportError as e:
        return f"skipped: {e} (pip install -e '.[bench]')"
    return None


def point_rows(args, data, cache) -> dict:
    teacher, _ = make_models(args)
    rows = {
        "floor: student CE step + teacher forward": lambda: plain_loop(args, data, teacher_forward=True),
        "student CE step alone": lambda: plain_loop(args, data, teacher_forward=False),
        "distill live (logits)": lambda: framework(args, data, Teacher(teacher), Objective(KD)),
        "distill live (fused LM head)": lambda: framework(
            args, data, Teacher(teacher), Objective(KD, fused_linear=True)
        ),
        f"distill top-{args.top_k} cache (logits)": lambda: framework(args, data, cache, Objective(KD)),
        f"distill top-{args.top_k} cache (fused LM head)": lambda: framework(
            args, data, cache, Objective(KD, fused_linear=True)
        ),
        "naive full-vocabulary KL loop": lambda: plain_loop(args, data, teacher_forward=True, naive_kl=True),
    }
    if trl_missing() is None:
        rows["TRL GKDTrainer (lambda=0, beta=0)"] = lambda: trl_gkd(args, data)
    return {name: fn for name, fn in rows.items() if any(w in name for w in args.rows)}


def run_point(args) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) tokens/s per row, after one discarded round (first allocations, lazy imports)."""
    args.total = args.warmup + args.steps
    teacher, _ = make_models(args)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, args.vocab, (args.total * args.batch, args.seq + 1), generator=g)
    print(
        f"\n== vocab {args.vocab:,} x hidden {args.hidden}: teacher {args.layers}L, student {args.layers // 2}L, "
        f"batch {args.batch}x{args.seq}, {args.precision}, threads {torch.get_num_threads()}",
        flush=True,
    )
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
        rows = point_rows(args, data, CachedTeacher(TeacherCache(tmp)))
        runs = {name: [] for name in rows}
        for r in range(args.rounds + 1):
            for name, fn in rows.items():
                rate = fn()
                # Lightning's trainer and module sit in reference cycles: without a collection, each row's
                # student and optimizer states stayed alive (17 GB resident by the 4th row at 128k).
                gc.collect()
                if r:
                    runs[name].append(rate)
            if r:
                line = ", ".join(f"{v[-1][0]:,.0f}" for v in runs.values())
                print(f"  round {r}: {line} tokens/s (wall); resident {resident_gib():.1f} GiB", flush=True)
    return {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in runs.items()}


def resident_gib() -> float:
    """This process's resident memory now (Linux), to show that rows do not accumulate."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def report(med: dict[str, tuple[float, float]]) -> None:
    """Ratios on wall time, and on process CPU time (less sensitive to other jobs on the machine)."""
    floor, alone = med.get("floor: student CE step + teacher forward"), med.get("student CE step alone")
    print(f"  {'row':42s} {'tokens/s (wall)':>16s} {'(CPU)':>9s}   ratio (wall, CPU)")
    for name, (wall, cpu) in med.items():
        ref, ref_name = (alone, "student CE") if "cache" in name or name.startswith("student") else (floor, "floor")
        ratio = f"{wall / ref[0]:.3f}, {cpu / ref[1]:.3f} x {ref_name}" if ref else ""
        print(f"  {name:42s} {wall:16,.0f} {cpu:9,.0f}   {ratio}")

    def ratio(a, b, goal):
        if a and b:
            print(
                f"  RATIO {goal.split(' (')[0]}: wall {a[0] / b[0]:.3f}, CPU {a[1] / b[1]:.3f} ({goal.split(' (')[1]}"
            )

    live = [v for n, v in med.items() if n.startswith("distill live")]
    best = max(live, key=lambda v: v[0]) if live else None
    ratio(best, floor, "live/floor (goal >= 0.92)")
    ratio(best, med.get("TRL GKDTrainer (lambda=0, beta=0)"), "live/TRL (goal >= 1.6 at 8k x 256)")
    cached = [v for n, v in med.items() if "cache" in n]
    ratio(max(cached, key=lambda v: v[0]) if cached else None, alone, "cache/student CE (goal >= 1.0)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", default=DEFAULT_POINTS, help="comma list of VOCABxHIDDEN:BATCHxSEQ")
    p.add_argument("--layers", type=int, default=4, help="teacher depth; the student keeps every other layer")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--precision", default=auto_precision("cpu"))
    p.add_argument(
        "--plain-adamw",
        choices=("fused", "default"),
        default="fused",
        help="the plain loops' AdamW: fused, as distill steps (the floor is then the best plain loop), or "
        "torch's default for CPU (a loop of ops per parameter, as the issue's first floor measured)",
    )
    p.add_argument("--rows", default="floor,alone,live,cache,naive,TRL", help="comma list of words in row names")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = p.parse_args()
    args.rows = args.rows.split(",")
    if (
        args.threads
    ):  # one thread: no thread spins waiting for a sibling, so CPU time is the work, even on a busy machine
        torch.set_num_threads(args.threads)
    print(trl_missing() or "TRL GKDTrainer row: trl installed")
    for text in args.points.split(","):
        point = parse_point(text)
        point.heads = max(1, point.hidden // 64)
        report(run_point(argparse.Namespace(**{**vars(args), **vars(point)})))


if __name__ == "__main__":
    main()
