"""report.md (the results table) and report.png (loss curves per term) for one run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402


def gap_closed(metrics: dict, key: str = "val_ppl") -> float | None:
    """(control − student) / (control − teacher) on ``key`` (perplexity, or bits per byte across
    tokenizers): 1 = as good as the teacher, 0 = no better than control."""
    try:
        c, s, t = metrics[f"baseline.{key}"], metrics[f"student.{key}"], metrics[f"teacher.{key}"]
    except KeyError:
        return None
    return (c - s) / (c - t) if c != t else None


# (label, metrics key prefix) of the models in the results table, in order
MODELS = (("teacher", "teacher"), ("student (distilled)", "student"), ("control (scratch, CE only)", "baseline"))
MODEL_COLUMNS = ("model", "params", "val ppl", "bits/byte", "top-1 agreement with teacher", "KL(teacher‖model)")


def model_rows(metrics: dict) -> list[tuple[str, list[str]]]:
    """The results table as text: (metrics key prefix, cells under ``MODEL_COLUMNS``) for every model the
    run measured, "—" where a value was not measured. report.md and the console's table share it."""
    rows = []
    for label, key in MODELS:
        if f"{key}.val_ppl" not in metrics:
            continue
        agree, kl = metrics.get(f"{key}.top1_agreement"), metrics.get(f"{key}.kl_to_teacher")
        bpb = metrics.get(f"{key}.bits_per_byte")  # tokenizer-free: compares models with different tokenizers
        rows.append(
            (
                key,
                [
                    label,
                    f"{metrics[f'{key}.params'] / 1e6:.2f}M",
                    f"{metrics[f'{key}.val_ppl']:.3f}",
                    f"{bpb:.4f}" if bpb is not None else "—",
                    f"{agree:.3f}" if agree is not None else "—",
                    f"{kl:.4f}" if kl is not None else "—",
                ],
            )
        )
    return rows


def summary_lines(metrics: dict) -> list[str]:
    """The bullets under the results table: size ratio, perplexity gap closed, distillation throughput."""
    lines = []
    if "teacher.params" in metrics:
        lines.append(f"- student / teacher parameters: {metrics['student.params'] / metrics['teacher.params']:.3f}")
    on = metrics.get("gap_closed.on", "val_ppl")  # bits per byte when the student has its own tokenizer
    closed = gap_closed(metrics, on)
    if closed is not None:
        what = "perplexity" if on == "val_ppl" else "bits-per-byte"
        lines.append(f"- {what} gap closed, (control − student) / (control − teacher): {closed:.3f}")
    lines.append(
        f"- distillation: {metrics['train.tokens']:,} tokens in {metrics['train.wall_s']:.1f} s "
        f"({metrics['train.tokens_per_s']:,.0f} tokens/s)"
    )
    return lines


def write_markdown(
    metrics: dict, path: Path, title: str = "Distillation report", sections: list[list[str]] = ()
) -> None:
    """The report: models table, ratios, cost; then any extra ``sections`` (filters, quantization)."""
    lines = [f"# {title}", "", "| " + " | ".join(MODEL_COLUMNS) + " |", "|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for _, cells in model_rows(metrics)]
    lines += ["", *summary_lines(metrics)]
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
    """Top row: one panel per run (teacher, student, control), one line per logged loss term.
    Bottom row: the learning rate and the training throughput of every run, on shared axes."""
    runs = {name: rows for name, rows in histories.items() if rows}
    cols = max(2, len(runs))
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 7.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], runs.items()):
        terms = sorted({k for r in rows for k in r if k.startswith("train/")})
        if len(terms) == 2 and "train/loss" in terms:  # CE-only run: the total is the CE term
            terms.remove("train/loss")
        _plot_series(ax, rows, {t: t.removeprefix("train/") for t in terms}, smooth=True)
        ax.set_title(f"{name}: loss terms")
        ax.set_yscale("log")
    for ax in axes[0][len(runs) :]:
        ax.axis("off")
    for ax, (key, title) in zip(axes[1], (("lr", "learning rate"), ("tokens_per_s", "throughput (tokens/s)"))):
        _plot_series(ax, [], {})
        for name, rows in runs.items():
            if any(key in r for r in rows):
                _plot_series(ax, rows, {key: name}, smooth=False)
        ax.set_title(title)
    for ax in axes[1][2:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_series(ax, rows: list[dict], keys: dict[str, str], smooth: bool = False) -> None:
    """``keys``: metric -> legend label; smoothed curves keep the raw values faintly behind them."""
    for key, label in keys.items():
        points = [(r["step"], r[key]) for r in rows if key in r]
        if not points:
            continue
        steps, values = zip(*points)
        if smooth:
            (line,) = ax.plot(steps, values, linewidth=0.6, alpha=0.35)
            ax.plot(steps, _ema(values), color=line.get_color(), linewidth=1.5, label=label)
        else:
            ax.plot(steps, values, linewidth=1.2, label=label)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
