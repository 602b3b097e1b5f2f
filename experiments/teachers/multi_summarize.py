"""The multi-teacher study's table from the runs' files: python experiments/teachers/multi_summarize.py [OUT]

Reads ``OUT/<run>/metrics.json`` of a fresh ``multi_run.sh`` (and copies each here as ``multi_<run>.json``),
else the copies committed here; prints the README table and the mixture's gain over the better single teacher.
"""

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {  # run -> what its student distilled from (the student is pruned from teacher A in every run)
    "single_A": "teacher A alone (8 layers; the quickstart)",
    "single_B": "teacher B alone (6 layers)",
    "mix_A_B": "mixture 0.5 A + 0.5 B",
}


def load(out: Path, run: str, prefix: str = "multi") -> dict | None:
    """``OUT/<run>/metrics.json`` if a fresh run wrote one (copied here as ``<prefix>_<run>.json``), else the copy here."""
    fresh, kept = out / run / "metrics.json", HERE / f"{prefix}_{run}.json"
    if fresh.exists():
        shutil.copyfile(fresh, kept)
    return json.loads(kept.read_text()) if kept.exists() else None


def teacher_ppl(metrics: dict, i: int) -> str:
    value = metrics.get(f"teachers.{i}.val_ppl")
    return f"{value:.2f}" if value else "—"


def main(out: Path) -> None:
    runs = {run: m for run in RUNS if (m := load(out, run)) is not None}
    print("| student distilled from | student val ppl | top-1 agr. (A) | KL to A | top-1 agr. (B) | steps | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run, m in runs.items():
        agree_b = m.get("teachers.1.student_top1_agreement")
        print(
            f"| {RUNS[run]} | {m['student.val_ppl']:.2f} | {m['student.top1_agreement']:.4f} | "
            f"{m['student.kl_to_teacher']:.4f} | {f'{agree_b:.4f}' if agree_b is not None else '—'} | "
            f"{m['train.steps']} | {m['train.tokens_per_s']:,.0f} |"
        )
    mixed = next((m for run, m in runs.items() if run.startswith("mix")), None)
    if mixed:
        ensemble = mixed.get("teachers.mixture.val_ppl")
        print(
            f"\nteacher val ppl: A {teacher_ppl(mixed, 0)}, B {teacher_ppl(mixed, 1)}, their 0.5/0.5 mixture {ensemble:.2f}"
        )
    singles = [m["student.val_ppl"] for run, m in runs.items() if run.startswith("single")]
    if mixed and singles:
        best = min(singles)
        print(f"mixture vs the better single teacher's student: {mixed['student.val_ppl'] - best:+.2f} val ppl")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/nonexistent"))
