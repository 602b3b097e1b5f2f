"""Generation speed in llama.cpp at larger shapes than the quickstart's: an F16 teacher against its
half-depth student in F16 and Q4_0, random weights (speed does not depend on the values).

The quickstart's teacher (15 MB in F16) and student (4 MB in Q4_0) fit in this CPU's caches, so a
token's time is mostly llama.cpp's per-token overhead and quantization buys little (experiments/deploy:
Q4_0 student 2.3x the F16 teacher). Once the weights outgrow the caches, generation reads every weight
once per token and its speed follows the bytes. Here the same architecture (Llama, the quickstart's
tokenizer of 4,096 tokens, MLP width 8/3 of hidden, tied embeddings) at ``--hidden`` x ``--layers``,
the student every other layer of it; files written with distill's GGUF writer, timed by
``benchmarks/gguf_generation.py`` (2 threads, greedy, interleaved rounds, medians).

    python experiments/deploy/scale_speed.py --tokenizer ~/.cache/distill/teachers/<key> --out /tmp/scale
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from distill.export.command import export_dir
from distill.student.scratch import build_llama

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def model_dir(out: Path, tokenizer: Path, hidden: int, layers: int, seed: int) -> Path:
    """A random-weight Llama at these sizes with the tokenizer's files beside it."""
    torch.manual_seed(seed)
    vocab = len(AutoTokenizer.from_pretrained(tokenizer))
    model = build_llama(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=hidden // 64)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, out / name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, required=True, help="a dir with the quickstart's tokenizer.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16, help="the teacher's; the student has half")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    teacher = model_dir(args.out / "teacher", args.tokenizer, args.hidden, args.layers, seed=0)
    student = model_dir(args.out / "student", args.tokenizer, args.hidden, args.layers // 2, seed=1)
    files = [export_dir(teacher, "f16")["gguf.path"]]
    files += [export_dir(student, t)["gguf.path"] for t in ("f16", "q8_0", "q4_0")]
    bench = [sys.executable, str(ROOT / "benchmarks" / "gguf_generation.py"), *files]
    subprocess.run([*bench, "--rounds", str(args.rounds), "--threads", str(args.threads)], check=True)


if __name__ == "__main__":
    main()
