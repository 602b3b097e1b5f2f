"""report.png: loss terms per run, the learning rate and the throughput; report.md: the compression section."""

from __future__ import annotations

import matplotlib.figure

from distill.eval.report import plot_curves, write_markdown


def _rows(n: int, ce_only: bool = False):
    rows = []
    for step in range(1, n + 1):
        row = {
            "step": step,
            "train/loss": 3.0 / step,
            "train/ce": 2.0 / step,
            "lr": 1e-3 * step / n,
            "tokens_per_s": 1000.0 + step,
        }
        if not ce_only:
            row["train/forward_kl"] = 1.0 / step
        rows.append(row)
    return rows


def test_plot_has_loss_terms_learning_rate_and_throughput(tmp_path, monkeypatch):
    figures = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k))[1]
    )
    plot_curves({"teacher": [], "student": _rows(5), "control": _rows(5, ce_only=True)}, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    axes = {ax.get_title(): ax for ax in figures[0].axes if ax.get_title()}
    student_terms = {t.get_text() for t in axes["student: loss terms"].get_legend().get_texts()}
    assert student_terms == {"ce", "forward_kl", "loss"}  # lr and throughput are not loss terms
    assert {t.get_text() for t in axes["control: loss terms"].get_legend().get_texts()} == {"ce"}
    for title in ("learning rate", "throughput (tokens/s)"):
        assert {t.get_text() for t in axes[title].get_legend().get_texts()} == {"student", "control"}
    lr_line = axes["learning rate"].get_lines()[0]
    assert list(lr_line.get_ydata()) == [r["lr"] for r in _rows(5)]


def test_markdown_includes_kl_and_extra_sections(tmp_path):
    metrics = {
        "teacher.params": 8e6,
        "teacher.val_ppl": 10.0,
        "student.params": 4e6,
        "student.val_ppl": 11.0,
        "student.top1_agreement": 0.8,
        "student.kl_to_teacher": 0.125,
        "train.tokens": 100,
        "train.wall_s": 1.0,
        "train.tokens_per_s": 100.0,
    }
    write_markdown(metrics, tmp_path / "r.md", sections=[["## Compression", "x"]])
    text = (tmp_path / "r.md").read_text()
    assert "| student (distilled) | 4.00M | 11.000 | — | 0.800 | 0.1250 |" in text  # no bits per byte measured
    assert "## Compression" in text
