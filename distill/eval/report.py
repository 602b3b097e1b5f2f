"""report.md (the results table) and report.png (loss curves per term) for one run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402


def gap_closed(metrics: dict) -> float | None:
    """(ppl_control − ppl_student) / (ppl_control − ppl_teacher): 1 = as good as the teacher, 0 = no better than control."""
    try:
        c, s, t = metrics["baseline.val_ppl"], metrics["student.val_ppl"], metrics["teacher.val_ppl"]
    except KeyError:
        return None
    return (c - s) / (c - t) if c != t else None


def write_markdown(metrics: dict, path: Path, title: str = "Distillation report",
                   sections: list[list[str]] = ()) -> None:
    """The report: models table, ratios, cost; then any extra ``sections`` (filters, quantization)."""
    rows = [("teacher", "teacher"), ("student (distilled)", "student"), ("control (scratch, CE only)", "baseline")]
    lines = [f"# {title}", "", "| model | params | val ppl | top-1 agreement with teacher |", "|---|---:|---:|---:|"]
    for label, key in rows:
        if f"{key}.val_ppl" not in metrics:
            continue
        params = metrics.get(f"{key}.params")
        agree = metrics.get(f"{key}.top1_agreement")
        lines.append(
            f"| {label} | {params / 1e6:.2f}M | {metrics[f'{key}.val_ppl']:.3f} | "
            + (f"{agree:.3f} |" if agree is not None else "— |")
        )
    lines.append("")
    if "teacher.params" in metrics:
        lines.append(f"- student / teacher parameters: {metrics['student.params'] / metrics['teacher.params']:.3f}")
    closed = gap_closed(metrics)
    if closed is not None:
        lines.append(f"- perplexity gap closed, (control − student) / (control − teacher): {closed:.3f}")
    lines.append(
        f"- distillation: {metrics['train.tokens']:,} tokens in {metrics['train.wall_s']:.1f} s "
        f"({metrics['train.tokens_per_s']:,.0f} tokens/s)"
    )
    for section in sections:
        lines += ["", *section]
    lines += ["", "![loss curves](report.png)", ""]
    path.write_text("\n".join(lines))


def _ema(values, alpha: float = 0.1) -> list[float]:
    out, acc = [], values[0]
    for v in values:
        acc = (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def plot_curves(histories: dict[str, list[dict]], path: Path) -> None:
    """One panel per run (teacher, student, control), one line per logged loss term."""
    runs = {name: rows for name, rows in histories.items() if rows}
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(5 * max(1, len(runs)), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], runs.items()):
        terms = sorted({k for r in rows for k in r if k != "step"})
        if len(terms) == 2 and "train/loss" in terms:  # CE-only run: the total is the CE term
            terms.remove("train/loss")
        for term in terms:
            steps, values = zip(*[(r["step"], r[term]) for r in rows if term in r])
            (line,) = ax.plot(steps, values, linewidth=0.6, alpha=0.35)
            ax.plot(steps, _ema(values), color=line.get_color(), linewidth=1.5, label=term.removeprefix("train/"))
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
