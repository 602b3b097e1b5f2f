"""The study of two teachers of different tokenizers, from the runs' files:
python experiments/teachers/cross_summarize.py [OUT]

Reads ``OUT/<run>/metrics.json`` of a fresh ``cross_run.sh`` (and copies each here as ``cross_<run>.json``),
else the copies committed here; prints the README table and the pair's gain over the better single teacher.
"""

import sys
from pathlib import Path

from multi_summarize import load  # experiments/teachers/, beside this script

RUNS = {  # run -> what its student distilled from (pruned from teacher A, A's tokenizer, in every run)
    "single_A": "teacher A alone (BPE 4,096; forward KL)",
    "single_C": "teacher C alone (BPE 8,192; GOLD on its alignment)",
    "mix_A_C": "0.5 A (forward KL) + 0.5 C (GOLD), teachers_mix=sum",
}


def number(metrics: dict, key: str, digits: int = 4) -> str:
    value = metrics.get(key)
    return "—" if value is None else f"{value:.{digits}f}"


def main(out: Path) -> None:
    runs = {run: m for run in RUNS if (m := load(out, run, prefix="cross")) is not None}
    print("| student distilled from | student val ppl | bits/byte | top-1 agr. (A) | top-1 agr. (C, aligned) | steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for run, m in runs.items():
        agree_a = m.get("teachers.0.student_top1_agreement", m.get("student.top1_agreement"))
        print(
            f"| {RUNS[run]} | {m['student.val_ppl']:.2f} | {m['student.bits_per_byte']:.4f} | "
            f"{'—' if agree_a is None else f'{agree_a:.4f}'} | {number(m, 'teachers.1.student_top1_agreement')} | "
            f"{m['train.steps']} |"
        )
    pair = runs.get("mix_A_C")
    if pair:
        print(
            f"\nteachers, bits per byte on the validation text: A {number(pair, 'teachers.0.bits_per_byte')}, "
            f"C {number(pair, 'teachers.1.bits_per_byte')}"
        )
    singles = [m["student.bits_per_byte"] for run, m in runs.items() if run.startswith("single")]
    if pair and singles:
        print(
            f"pair vs the better single teacher's student: {pair['student.bits_per_byte'] - min(singles):+.4f} bits/byte"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/nonexistent"))
