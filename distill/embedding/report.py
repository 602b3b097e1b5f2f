"""report.md of an embedding run: teacher, pruned student and distilled student side by side."""

from __future__ import annotations

from pathlib import Path

from distill.cache import write_atomic


def write_report(metrics: dict, path: Path, k: int) -> None:
    m = metrics
    lines = [
        "# Embedding distillation report",
        "",
        f"Held-out texts: {m['val.texts']:,} ({m['eval.queries']:,} queries for top-{k} retrieval against the rest).",
        "",
        f"| model | layers | params | mean cosine to teacher | top-{k} overlap with teacher | sentences/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher | {m['teacher.layers']} | {m['teacher.params'] / 1e6:.2f}M | 1 | 1 | {m['teacher.sentences_per_s']:,.1f} |",
        f"| student, pruned (no distillation) | {m['student.layers']} | {m['student.params'] / 1e6:.2f}M | "
        f"{m['pruned.embed_cosine']:.3f} | {m[f'pruned.top{k}_overlap']:.3f} | — |",
        f"| student, distilled | {m['student.layers']} | {m['student.params'] / 1e6:.2f}M | "
        f"{m['student.embed_cosine']:.3f} | {m[f'student.top{k}_overlap']:.3f} | {m['student.sentences_per_s']:,.1f} |",
        "",
        f"- student / teacher parameters: {m['student.params_ratio']:.3f}",
        f"- encode speed-up (same batches, same process, warmed up): {m['speedup']:.2f}×",
        f"- distillation: {m['train.steps']} steps, {m['train.tokens']:,} tokens in {m['train.wall_s']:.1f} s "
        f"({m['train.tokens_per_s']:,.0f} tokens/s)",
        "",
        "![loss curves](report.png)",
        "",
    ]
    write_atomic(path, "\n".join(lines))
