"""Do masks and templates cost anything per step? Chat rows vs plain rows, the same tokens.

The rows are the packed training rows of ``data=stdlib_instruct`` (ChatML, several conversations
per row, position ids restarting per conversation so attention is isolated between them). The
same distillation step (``DistillationModule``: live teacher, forward KL + 0.5 CE, Lightning
Trainer) runs over:

- ``plain``: those rows as plain text: every next token a target, no position ids (the causal
  fast path of SDPA);
- ``chat packed``: the assistant-only targets and the restarting position ids (a block-diagonal
  mask built by transformers);
- ``chat one per row``: one conversation per row, right-padded (what packing saves).

Interleaved rounds, medians. Prints tokens/s (every position of a row) and target tokens/s
(positions the loss trains on), with the ratio of chat packed to plain; goal >= 0.95.

    python benchmarks/chat_throughput.py
    python benchmarks/chat_throughput.py --steps 4 --warmup 1 --rounds 1 --layers 2   # quick check
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import lightning as L
import numpy as np
import torch
from distill_throughput import StepTimer  # the sibling benchmark (scripts run with benchmarks/ on sys.path)
from torch.utils.data import DataLoader

from distill.cli.resolvers import auto_precision
from distill.data.chat.datamodule import ChatDataset, from_stdlib_instruct
from distill.distillation import DistillationModule
from distill.losses.objective import Objective
from distill.student.prune import every_other_layer
from distill.student.scratch import build_llama
from distill.teacher.module import Teacher


def rows(args, packing: bool, cache: str):
    dm = from_stdlib_instruct(packing=packing, seq_len=args.seq, batch_size=args.batch, cache_dir=cache, seed=0)
    dm.load_documents()
    dm.use_tokenizer(dm.train_tokenizer())
    dm.setup()
    return dm


def step_rate(args, vocab: int, dataset) -> tuple[float, float]:
    """(tokens/s, target tokens/s) of the distillation step over ``dataset``."""
    torch.manual_seed(0)
    teacher = build_llama(vocab, args.hidden, args.layers, args.heads, max_seq_len=args.seq)
    module = DistillationModule(
        every_other_layer(teacher), Objective({"forward_kl": 1.0, "ce": 0.5}), vocab, teacher=Teacher(teacher),
        lr=1e-4, max_steps=args.warmup + args.steps,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=False)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=args.precision, max_steps=args.warmup + args.steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    n = args.batch * timer.steps
    timed = dataset.targets[args.batch * args.warmup : args.batch * args.warmup + n]  # the batches timed
    return n * args.seq / timer.elapsed, float((timed != -100).sum()) / timer.elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default=auto_precision("cpu"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        packed, single = rows(args, True, cache), rows(args, False, cache)
    vocab = len(packed.tokenizer)
    blocks, targets, positions = packed.train_blocks, packed.train_targets, packed.train_extras["position_ids"]
    datasets = {
        "plain": ChatDataset(blocks, blocks[:, 1:].astype(np.int64), {}),
        "chat packed": ChatDataset(blocks, targets, {"position_ids": positions}),
        "chat one per row": ChatDataset(single.train_blocks, single.train_targets, {}),
    }
    need = args.batch * (args.warmup + args.steps + 1)
    assert all(len(d) >= need for d in datasets.values()), f"need {need} rows: lower --steps or --batch"
    print(
        f"sizes: teacher {args.layers}L x {args.hidden}, student {args.layers // 2}L, vocab {vocab}, batch "
        f"{args.batch}x{args.seq}, precision {args.precision}, threads {torch.get_num_threads()}; packing: "
        f"{packed.stats['train']['kept']} conversations in {len(blocks)} rows (one per row: {len(single.train_blocks)})"
    )
    runs = {name: [] for name in datasets}
    for r in range(args.rounds):
        for name, dataset in datasets.items():
            runs[name].append(step_rate(args, vocab, dataset))
        print(f"round {r + 1}: " + ", ".join(f"{name} {v[-1][0]:,.0f}" for name, v in runs.items()) + " tokens/s")
    med = {name: (statistics.median(v[0] for v in r), statistics.median(v[1] for v in r)) for name, r in runs.items()}
    for name, (tokens, targets_) in med.items():
        print(f"{name:18s} {tokens:9,.0f} tokens/s   {targets_:9,.0f} target tokens/s")
    print(f"RATIO chat packed / plain tokens/s = {med['chat packed'][0] / med['plain'][0]:.3f} (goal >= 0.95)")
    print(
        f"packing gain: target tokens/s packed / one per row = {med['chat packed'][1] / med['chat one per row'][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
