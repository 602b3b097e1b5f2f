"""The compression summary of a run: what the student saves (parameters, bytes, time) beside what it
loses (perplexity) and what distilling it cost (tokens, teacher FLOPs, wall time)."""

from __future__ import annotations

from pathlib import Path

from distill.eval.speed import size_on_disk


def teacher_forward_tokens(backend: str, train_tokens: int, cache_manifest: dict | None = None) -> int | None:
    """Tokens the teacher ran a forward pass on to train this student: every training token with a
    live teacher; with an offline cache, every token the cache was built from (all its splits)."""
    if backend == "live":
        return int(train_tokens)
    if backend == "cache" and cache_manifest:
        return sum(int(s["num_rows"]) for s in cache_manifest["splits"].values()) * int(cache_manifest["seq_len"])
    return None  # teacher=none: the teacher's cost is in whoever wrote the data


def compression_metrics(
    metrics: dict,
    teacher_dir: str | Path | None,
    student_dir: str | Path,
    forward_tokens: int | None,
    run_wall_s: float | None,
) -> dict:
    """``compression.*`` ratios (teacher / student for params and size, student / teacher for speed:
    > 1 is better) and cost keys, from what ``metrics`` already holds; missing inputs are skipped."""
    # a quantized run ships its packed low-bit checkpoint: that is the student's size
    out: dict = {"student.size_bytes": metrics.get("quant.packed_bytes") or size_on_disk(student_dir)}
    if teacher_dir is not None and Path(teacher_dir).is_dir():
        out["teacher.path"] = str(teacher_dir)
        out["teacher.size_bytes"] = size_on_disk(teacher_dir)
        out["compression.size_x"] = out["teacher.size_bytes"] / max(1, out["student.size_bytes"])
    if metrics.get("teacher.params") and metrics.get("student.params"):
        out["compression.params_x"] = metrics["teacher.params"] / metrics["student.params"]
    # tokens of different tokenizers are not one unit: then the speed is per row of the same text
    per = "rows" if metrics.get("student.scoring_rows_per_s") else "tokens"
    if metrics.get(f"teacher.scoring_{per}_per_s") and metrics.get(f"student.scoring_{per}_per_s"):
        out["compression.speed_x"] = metrics[f"student.scoring_{per}_per_s"] / metrics[f"teacher.scoring_{per}_per_s"]
    if "teacher.val_ppl" in metrics and "student.val_ppl" in metrics and per == "tokens":
        out["compression.ppl_delta"] = metrics["student.val_ppl"] - metrics["teacher.val_ppl"]
    if forward_tokens is not None:
        out["teacher.forward_tokens"] = forward_tokens
        if metrics.get("teacher.params"):
            # the standard estimate of a forward pass, 2 FLOPs per parameter per token (Kaplan et al. 2020)
            out["teacher.forward_flops"] = 2 * metrics["teacher.params"] * forward_tokens
    if run_wall_s is not None:
        out["run.wall_s"] = run_wall_s
    return out


def compression_section(metrics: dict) -> list[str]:
    """The report.md section: cost beside quality, one line each."""
    rows = [
        (
            "parameters",
            "compression.params_x",
            lambda m: f"{m['teacher.params'] / 1e6:.2f}M → {m['student.params'] / 1e6:.2f}M",
        ),
        (
            "size on disk",
            "compression.size_x",
            lambda m: (
                f"{m['teacher.size_bytes'] / 2**20:.2f} → {m['student.size_bytes'] / 2**20:.2f} MiB"
                + (" (packed low-bit)" if "quant.packed_bytes" in m else "")
            ),
        ),
        (
            "scoring speed",
            "compression.speed_x",
            lambda m: (
                f"{m['teacher.scoring_rows_per_s']:,.1f} → {m['student.scoring_rows_per_s']:,.1f} rows of text/s"
                if "student.scoring_rows_per_s" in m
                else f"{m['teacher.scoring_tokens_per_s']:,.0f} → {m['student.scoring_tokens_per_s']:,.0f} tokens/s"
            ),
        ),
    ]
    lines = ["## Compression", "", "| | teacher → student | × |", "|---|---|---:|"]
    for label, key, text in rows:
        if key in metrics:
            lines.append(f"| {label} | {text(metrics)} | {metrics[key]:.2f} |")
    if "compression.ppl_delta" in metrics:
        lines.append(
            f"| validation perplexity | {metrics['teacher.val_ppl']:.3f} → {metrics['student.val_ppl']:.3f} "
            f"| Δ {metrics['compression.ppl_delta']:+.3f} |"
        )
    lines.append("")
    cost = [f"- tokens used for distillation: {metrics.get('train.tokens', 0):,}"]
    if "teacher.forward_tokens" in metrics:
        flops = metrics.get("teacher.forward_flops")
        cost.append(
            f"- teacher forward passes: {metrics['teacher.forward_tokens']:,} tokens"
            + (f", ≈ {flops:.3g} FLOPs (2 × teacher params × tokens)" if flops else "")
        )
    if "run.wall_s" in metrics:
        cost.append(
            f"- wall time: {metrics['run.wall_s']:.1f} s for the whole run, "
            f"{metrics.get('train.wall_s', 0):.1f} s of it distilling"
        )
    if "compression.speed_x" in metrics:
        cost.append(
            "- speed: validation forward passes (scoring) on this machine after a warm-up, same batches for both"
        )
    return lines + cost
