"""Teacher-cache formats in one run: today's ``fp16`` against ``compact`` (distill/teacher/compact.py).

On the quickstart teacher (``experiment=quickstart``: the 8 x 256 Llama trained from scratch on the
stdlib corpus, loaded from the distill cache, trained first if it is not there) over real validation
rows of the stdlib corpus, top-64:

- bytes/token: each format's shard files (headers included) over the tokens they hold;
- KL(full teacher || reconstruction), mean over tokens: the cache's top-k read back through
  ``TeacherCache.lookup`` as training reads it with the tail bucket (distill/losses/divergences.py:
  tail = max(1 - sum exp(top-k), TAIL_EPS), the k+1 outcomes renormalized), the tail's mass spread
  evenly over the vocabulary outside the top-k. Goal (issue 20): compact <= 1.05 x fp16. Also the
  KL on the k+1 outcomes against the exact top-k + tail (the storage error alone);
- write throughput: the store step of the writer (``TeacherCacheWriter``: encode, save, rename)
  over the same teacher outputs, and the whole write with the teacher's forward + top-k (measured
  once, the same for both formats) added;
- read throughput: ``TeacherCache.gather`` of random batches of rows (the training loop's read;
  the shards are in the page cache after the first round).

Rounds are interleaved, medians printed, with ratios compact / fp16. Asserts nothing.

    python benchmarks/cache_format.py                  # 256 validation rows (65,536 tokens), 3 rounds
    python benchmarks/cache_format.py --rows 32 --rounds 1   # quick check
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.losses.divergences import TAIL_EPS
from distill.teacher.cache import TeacherCache
from distill.teacher.cache_manifest import build_manifest, measured_bytes_per_token, write_manifest
from distill.teacher.cache_writer import TeacherCacheWriter

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
FORMATS = ("fp16", "compact")


def quickstart(rows: int):
    """The quickstart's teacher (float32, eval) and its first ``rows`` validation blocks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from distill.cli.resolvers import register
    from distill.run.data import prepare_data
    from distill.run.teacher import resolve_teacher

    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=quickstart",
                f"data.max_val_blocks={rows}",
                "hydra.runtime.output_dir=/tmp/cache_format_bench",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    dm = prepare_data(cfg)
    model = resolve_teacher(cfg, dm, for_training=False).load_weights().float().eval()
    return model, np.asarray(dm.val_blocks[:rows]), len(dm.tokenizer)


@torch.no_grad()
def teacher_outputs(model, blocks: np.ndarray, k: int, shard_rows: int, micro: int = 8):
    """Per shard: the writer's prediction (float32 top-k, ids), and per token what the KL needs of the full
    distribution: the exact top-k, the tail mass and the tail's sum of p log p."""
    shards, exact, seconds = [], {"lp": [], "ids": [], "tail": [], "tail_plogp": []}, 0.0
    for start in range(0, len(blocks), shard_rows):
        values, indices = [], []
        for s in range(start, min(start + shard_rows, len(blocks)), micro):
            ids = torch.from_numpy(blocks[s : min(s + micro, start + shard_rows), :-1].astype(np.int64))
            t0 = time.perf_counter()
            lp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
            v, i = lp.topk(k, -1)
            seconds += time.perf_counter() - t0
            values.append(v.numpy())
            indices.append(i.numpy())
            rest = lp.scatter(-1, i, float("-inf"))
            exact["lp"].append(v.reshape(-1, k))
            exact["ids"].append(i.reshape(-1, k))
            exact["tail"].append(torch.logsumexp(rest, -1).exp().reshape(-1))
            exact["tail_plogp"].append(torch.where(rest.isinf(), 0.0, rest.exp() * rest).sum(-1).reshape(-1))
        shards.append((np.concatenate(values), np.concatenate(indices)))
    return shards, {name: torch.cat(parts) for name, parts in exact.items()}, seconds


def kl_to_full(cache: TeacherCache, exact: dict, vocab: int) -> tuple[float, float]:
    """(KL(full || reconstruction), KL(exact k+1 outcomes || read k+1 outcomes)), means over tokens."""
    out = cache.lookup(torch.arange(cache.num_rows()))
    lp, ids = out.logprobs.reshape(-1, cache.top_k).double(), out.indices.reshape(-1, cache.top_k)
    tail = (-torch.expm1(torch.logsumexp(lp, -1, keepdim=True))).clamp(min=TAIL_EPS)
    read = torch.log_softmax(torch.cat([lp, tail.log()], -1), -1)  # as the bucket tail reads it
    by_id, true_by_id = ids.argsort(-1), exact["ids"].argsort(-1)
    assert torch.equal(ids.gather(-1, by_id), exact["ids"].gather(-1, true_by_id)), "the top-k ids differ"
    true_lp, read_k = exact["lp"].double().gather(-1, true_by_id), read[:, :-1].gather(-1, by_id)
    p_tail = exact["tail"].double()
    k = cache.top_k
    full = (true_lp.exp() * (true_lp - read_k)).sum(-1) + exact["tail_plogp"].double()
    full -= p_tail * (read[:, -1] - math.log(vocab - k))
    bucket_true = torch.cat([true_lp, p_tail.clamp(min=1e-30).log()[:, None]], -1)
    bucket = (bucket_true.exp() * (bucket_true - torch.cat([read_k, read[:, -1:]], -1))).sum(-1)
    return full.mean().item(), bucket.mean().item()


def store(fmt: str, shards, manifest: dict, where: Path) -> float:
    """Seconds of the writer's store step (encode, save, rename) over every shard."""
    writer = TeacherCacheWriter(where, manifest)
    t0 = time.perf_counter()
    for n, prediction in enumerate(shards):
        writer.write_on_batch_end(None, None, prediction, None, {"split": "train", "shard": n}, n, 0)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=256, help="validation rows (of 256 tokens)")
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--shard-rows", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="rows per gather (the quickstart's batch size)")
    p.add_argument("--reads", type=int, default=50, help="gathers per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    logging.getLogger("distill").setLevel(logging.WARNING)
    torch.manual_seed(0)

    model, blocks, vocab = quickstart(args.rows)
    rows, seq = blocks.shape[0], blocks.shape[1] - 1
    tokens = rows * seq
    shards, exact, forward_s = teacher_outputs(model, blocks, args.top_k, args.shard_rows)
    print(
        f"quickstart teacher ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, vocab {vocab}), "
        f"{rows} validation rows x {seq} = {tokens:,} tokens, top-{args.top_k}; teacher forward + top-k "
        f"{tokens / forward_s:,.0f} tokens/s"
    )
    print(f"mean tail mass outside the top-{args.top_k}: {exact['tail'].mean():.4f}")
    keys = {"teacher_key": "bench", "tokenizer_key": "bench", "data_key": "bench"}
    manifests = {
        fmt: build_manifest(
            keys=keys,
            top_k=args.top_k,
            temperature=1.0,
            vocab_size=vocab,
            seq_len=seq,
            split_rows={"train": rows},
            shard_rows=args.shard_rows,
            cache_format=fmt,
        )
        for fmt in FORMATS
    }
    write_s, read_s = {f: [] for f in FORMATS}, {f: [] for f in FORMATS}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        caches = {}
        for r in range(args.rounds):
            for fmt in FORMATS:
                where = Path(tmp) / f"{fmt}-{r}"
                write_manifest(where, manifests[fmt])
                write_s[fmt].append(store(fmt, shards, manifests[fmt], where))
                if fmt == "compact":
                    write_manifest(
                        where, {**manifests[fmt], "bytes_per_token": measured_bytes_per_token(where, manifests[fmt])}
                    )
                caches[fmt] = TeacherCache(where)
            batches = [rng.choice(rows, args.batch, replace=False) for _ in range(args.reads)]
            for fmt in FORMATS:
                caches[fmt].gather(batches[0])  # opens the shards
                t0 = time.perf_counter()
                for b in batches:
                    caches[fmt].gather(b)
                read_s[fmt].append(time.perf_counter() - t0)
        size = {f: measured_bytes_per_token(caches[f].cache_dir, caches[f].manifest) for f in FORMATS}
        kl = {f: kl_to_full(caches[f], exact, vocab) for f in FORMATS}

    write = {f: tokens / statistics.median(write_s[f]) for f in FORMATS}
    whole = {f: tokens / (forward_s + statistics.median(write_s[f])) for f in FORMATS}
    read = {f: args.reads * args.batch * seq / statistics.median(read_s[f]) for f in FORMATS}
    print(f"\n| | {' | '.join(FORMATS)} | compact / fp16 |\n|---|---:|---:|---:|")
    rows_out = [
        ("bytes/token (files / tokens)", size, "{:.2f}"),
        ("KL(full teacher || read top-k + tail bucket), nats", {f: kl[f][0] for f in FORMATS}, "{:.5f}"),
        ("KL on the k+1 outcomes (storage error alone), nats", {f: kl[f][1] for f in FORMATS}, "{:.2e}"),
        ("write: store step, tokens/s", write, "{:,.0f}"),
        ("write: with the teacher forward, tokens/s", whole, "{:,.0f}"),
        (f"read: gather of {args.batch} random rows, tokens/s", read, "{:,.0f}"),
    ]
    for name, v, f in rows_out:
        print(f"| {name} | {f.format(v['fp16'])} | {f.format(v['compact'])} | {v['compact'] / v['fp16']:.3f} |")
    print(f"\nKL ratio compact / fp16 = {kl['compact'][0] / kl['fp16'][0]:.4f} (goal <= 1.05)")
    print(f"bytes/token compact = {size['compact']:.2f} (goal <= 100)")


if __name__ == "__main__":
    main()
