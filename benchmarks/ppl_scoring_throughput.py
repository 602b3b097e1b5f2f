"""Perplexity-scoring throughput: ``score_texts`` vs the model's raw forward on the same batches.

Reference ("unavoidable"): the model's forward alone (inference mode, no KV cache) over exactly the
token batches ``score_texts`` builds (same length sorting, same right padding), tensors prepared
beforehand. Measured: ``score_texts`` end to end on the raw texts: tokenization, sorting, padding,
forward, and the per-token NLL. A small Llama (random weights: the speed does not depend on them)
and a byte-level BPE trained on the same stdlib documents. Warm-up first, then interleaved rounds so
machine noise hits both alike; medians are printed. Goal: scoring >= 0.8x the raw forward's
tokens/s. Asserts nothing.

    python benchmarks/ppl_scoring_throughput.py                              # 300 documents, 3 rounds
    python benchmarks/ppl_scoring_throughput.py --max-docs 50 --rounds 1     # quick check
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch

from distill.data.filters.lm_nll import collate, encode, length_batches, score_texts
from distill.data.sources import stdlib_documents
from distill.data.tokenizer import load_tokenizer, train_bpe
from distill.student.scratch import build_llama


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-docs", type=int, default=300)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in both")
    return p.parse_args(argv)


def raw_forward(model, batches, bf16: bool) -> None:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask, use_cache=False)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    texts = [d.text for d in stdlib_documents(args.max_docs)]
    with tempfile.TemporaryDirectory() as tmp:
        train_bpe(texts, args.vocab, tmp)
        tok = load_tokenizer(tmp)
    torch.manual_seed(0)
    model = build_llama(
        len(tok), args.hidden, args.layers, args.heads, max_seq_len=args.max_tokens, eos_token_id=tok.eos_token_id
    ).eval()
    seqs = encode(tok, texts, args.max_tokens)
    batches = [collate([seqs[i] for i in b]) for b in length_batches(seqs, args.batch_size)]
    tokens = sum(len(s) for s in seqs)
    padded = sum(ids.numel() for ids, _ in batches)
    print(
        f"{len(texts)} documents, {tokens:,} tokens ({padded:,} with padding) in {len(batches)} batches of "
        f"{args.batch_size}; Llama {args.hidden}x{args.layers}, vocab {len(tok)}, {torch.get_num_threads()} threads"
    )

    def score():
        scores = score_texts(model, tok, texts, args.batch_size, args.max_tokens, bf16=args.bf16)
        assert all(math.isfinite(s) for s in scores)

    def forward():
        raw_forward(model, batches, args.bf16)

    raw_forward(model, batches[:2], args.bf16)  # warm-up: allocator, kernels, tokenizer
    score_texts(model, tok, texts[:16], args.batch_size, args.max_tokens, bf16=args.bf16)
    times = {"forward": [], "score_texts": []}
    for r in range(args.rounds):
        times["forward"].append(timed(forward))
        times["score_texts"].append(timed(score))
        print(
            f"round {r + 1}: forward {tokens / times['forward'][-1]:,.0f} tok/s, "
            f"score_texts {tokens / times['score_texts'][-1]:,.0f} tok/s"
        )
    fwd, sc = (tokens / statistics.median(times[k]) for k in ("forward", "score_texts"))
    print(f"median: raw forward {fwd:,.0f} tok/s, score_texts {sc:,.0f} tok/s, ratio {sc / fwd:.3f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
