"""Generation speed of GGUF files in llama.cpp on this machine's CPU threads, as ratios to the first.

Each file is loaded once and warmed up; then rounds interleave the files (noise from other processes
hits all alike), each round a greedy generation of ``--new-tokens`` after a fixed prompt from an empty
cache; medians of time to first token and tokens/s (after the first) are printed with the ratio to the
first file (the reference, e.g. the F16 teacher). Two rates: the wall clock of llama-cpp-python's
generate loop (Python sampling and the per-token copy of the logits included), and llama.cpp's own
decode time per generated token (``llama_perf_context``: ``t_eval_ms / n_eval``, what llama-cli and
llama-bench report as eval tokens/s). Needs llama-cpp-python (``pip install -e ".[deploy]"``).

    python benchmarks/gguf_generation.py teacher/student.f16.gguf run/student.f16.gguf run/student.q4_0.gguf
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from distill.export import llama_cpp as runtime


def one_round(llm, prompt: list[int], n: int) -> tuple[float, float, float]:
    """(time to first token s, tokens/s after it by the wall clock, tokens/s of llama.cpp's decode calls)."""
    lib = runtime.require()
    llm.reset()
    lib.llama_perf_context_reset(llm.ctx)
    start = time.perf_counter()
    first = None
    for count, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0), start=1):
        if count == 1:
            first = time.perf_counter()
        if count == n + 1:
            break
    wall = n / (time.perf_counter() - first)
    perf = lib.llama_perf_context(llm.ctx)
    return first - start, wall, perf.n_eval / (perf.t_eval_ms / 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    args = parser.parse_args()
    models = {f: runtime.load(f, n_ctx=256, threads=args.threads) for f in args.files}
    prompt = list(range(1, args.prompt_tokens + 1))
    times = {f: [] for f in models}
    for llm in models.values():
        one_round(llm, prompt, 4)  # warm-up
    for _ in range(args.rounds):
        for f, llm in models.items():
            times[f].append(one_round(llm, prompt, args.new_tokens))
    ref = None
    print(f"{'file':60s} {'MB':>7s} {'TTFT ms':>8s} {'tok/s':>8s} {'x ref':>6s} {'decode tok/s':>12s} {'x ref':>6s}")
    for f, rows in times.items():
        ttft = statistics.median(t for t, _, _ in rows)
        rate = statistics.median(r for _, r, _ in rows)
        decode = statistics.median(d for _, _, d in rows)
        ref = ref or (rate, decode)
        print(
            f"{str(f):60s} {f.stat().st_size / 1e6:7.2f} {ttft * 1e3:8.1f} {rate:8.1f} {rate / ref[0]:6.2f}"
            f" {decode:12.1f} {decode / ref[1]:6.2f}"
        )


if __name__ == "__main__":
    main()
