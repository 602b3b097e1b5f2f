"""The sampled teacher cache against top-k at equal bytes per token: how far each one's training gradient
is from the full-vocabulary one (issue 20; distill/teacher/sampled.py).

On the quickstart teacher (``experiment=quickstart``, loaded from the distill cache as
``benchmarks/cache_format.py`` loads it) over real validation rows, with a student (default: the teacher
with every other layer removed, the quickstart's pruned student before training; ``--student DIR``: a
trained one), per position at temperature 1:

- the true gradient of forward KL(p ‖ q) w.r.t. the student's logits: q − p over the full vocabulary;
- top-k (``bucket`` tail, the cache's default) from the fp16 layout (k = bytes / 4) and from the compact
  layout (the largest k that fits the bytes), the gradient the training kernel computes
  (``divergences.logit_chunk``);
- sampled: N = bytes / 3 draws (uint8 counts + uint16 ids), the same kernel on p̂ = count / N.

Reported per budget: the mean over positions of cos(estimate, truth) and of ‖estimate − truth‖ / ‖truth‖
(one cache: bias and noise together); the same for the gradient of the student's LM head summed over all
positions (what one optimizer step sees: the sampled noise averages out, top-k's bias does not); and for
the sampled cache the per-position cosine of the mean of ``--repeats`` independent caches (-> 1 as the
repeats grow: no bias; top-k is deterministic, its value is the single one's). Asserts nothing.

    python benchmarks/sampled_cache.py                       # 16 validation rows (4,096 positions)
    python benchmarks/sampled_cache.py --rows 4 --budgets 96  # quick check
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_format import quickstart  # noqa: E402  (the sibling benchmark: scripts run with benchmarks/ on sys.path)

from distill.losses.divergences import logit_chunk  # noqa: E402
from distill.teacher import compact  # noqa: E402
from distill.teacher.outputs import SparseTeacher  # noqa: E402
from distill.teacher.sampled import draw, shard_generator, to_logprobs  # noqa: E402


def every_other_layer(teacher):
    """The quickstart's pruned student before training: the teacher's layers 0, 2, 4, ..."""
    student = copy.deepcopy(teacher)
    student.model.layers = torch.nn.ModuleList(list(student.model.layers)[::2])
    student.config.num_hidden_layers = len(student.model.layers)
    return student


@torch.no_grad()
def logits_and_hidden(model, blocks, micro: int = 4):
    """Logits ``[positions, V]`` and final hidden states ``[positions, H]`` (after the final norm)."""
    logits, hidden = [], []
    for s in range(0, len(blocks), micro):
        ids = torch.from_numpy(blocks[s : s + micro, :-1].astype("int64"))
        out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
        logits.append(out.logits.float().flatten(0, 1))
        hidden.append(out.hidden_states[-1].float().flatten(0, 1))
    return torch.cat(logits), torch.cat(hidden)


def kernel_grad(s: torch.Tensor, sparse: SparseTeacher) -> torch.Tensor:
    """Per-position gradient of the bucket forward KL w.r.t. the student logits, as training computes it."""
    y = torch.zeros(len(s), dtype=torch.long)
    m = torch.ones(len(s), dtype=torch.bool)
    _, g = logit_chunk(s, sparse, y, m, {"forward_kl": 1.0})
    return g


def top_k(log_p: torch.Tensor, k: int) -> SparseTeacher:
    return SparseTeacher(*log_p.topk(k, -1))


def sampled(log_p: torch.Tensor, n: int, seed: int) -> SparseTeacher:
    counts, ids = draw(log_p, n, shard_generator(seed, "val", 0))
    return SparseTeacher(torch.from_numpy(to_logprobs(counts.numpy().astype("uint8"), n)), ids)


def compact_k(budget: int, vocab: int) -> int:
    """The largest k whose compact records fit ``budget`` bytes per token."""
    return max((k for k in range(1, 257) if sum(compact.record_bytes(k, vocab)) <= budget), default=0)


def scores(est: torch.Tensor, true: torch.Tensor, hidden: torch.Tensor) -> dict:
    cos = F.cosine_similarity(est, true, dim=-1)
    rel = (est - true).norm(dim=-1) / true.norm(dim=-1)
    head_est, head_true = est.t() @ hidden, true.t() @ hidden  # the LM head's gradient, summed over positions
    return {
        "token_cos": cos.mean().item(),
        "token_rel_err": rel.mean().item(),
        "head_cos": F.cosine_similarity(head_est.flatten(), head_true.flatten(), dim=0).item(),
        "head_rel_err": ((head_est - head_true).norm() / head_true.norm()).item(),
    }


def budget_rows(budget, log_p, s, hidden, true, vocab, repeats) -> list[dict]:
    rows = []
    for layout, k in (("top-k fp16", budget // 4), ("top-k compact", compact_k(budget, vocab))):
        if k:
            rows.append({"method": layout, "slots": k, **scores(kernel_grad(s, top_k(log_p, k)), true, hidden)})
            rows[-1]["mean_cos"] = rows[-1]["token_cos"]  # deterministic: the mean of repeats is itself
    n = min(255, budget // 3)
    draws = [kernel_grad(s, sampled(log_p, n, seed)) for seed in range(repeats)]
    row = {"method": "sampled", "slots": n, **scores(draws[0], true, hidden)}
    row["mean_cos"] = F.cosine_similarity(torch.stack(draws).mean(0), true, dim=-1).mean().item()
    rows.append(row)
    return [{"bytes": budget, **r} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16, help="validation rows (of 256 tokens)")
    p.add_argument("--budgets", type=int, nargs="+", default=[24, 48, 96, 192, 256], help="bytes per token")
    p.add_argument("--repeats", type=int, default=8, help="independent sampled caches for the bias check")
    p.add_argument("--student", help="a trained student's directory (default: every other teacher layer)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    logging.getLogger("distill").setLevel(logging.WARNING)
    torch.manual_seed(0)

    teacher, blocks, vocab = quickstart(args.rows)
    if args.student:
        from transformers import AutoModelForCausalLM

        student = AutoModelForCausalLM.from_pretrained(args.student).float().eval()
    else:
        student = every_other_layer(teacher)
    t_logits, _ = logits_and_hidden(teacher, blocks)
    s, hidden = logits_and_hidden(student, blocks)
    log_p = torch.log_softmax(t_logits[:, :vocab], -1)
    s = s[:, :vocab]
    true = s.softmax(-1) - log_p.exp()
    print(
        f"quickstart teacher, vocab {vocab}, {len(s):,} validation positions; student: "
        f"{args.student or 'every other teacher layer'}; forward KL gradient w.r.t. the student's logits, T = 1"
    )
    rows = [r for b in args.budgets for r in budget_rows(b, log_p, s, hidden, true, vocab, args.repeats)]
    print(
        f"\n| bytes/token | cache | slots | cos (per position) | rel. error (per position) | cos (LM-head grad) | "
        f"rel. error (LM-head grad) | cos of the mean of {args.repeats} caches |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['bytes']} | {r['method']} | {r['slots']} | {r['token_cos']:.4f} | {r['token_rel_err']:.4f} | "
            f"{r['head_cos']:.4f} | {r['head_rel_err']:.4f} | {r['mean_cos']:.4f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"positions": len(s), "vocab": vocab, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
