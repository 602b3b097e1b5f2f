"""The results block of experiments/cross-tokenizer/README.md, from the metrics files beside it.

python experiments/cross-tokenizer/summarize.py experiments/cross-tokenizer/runs   # copy each run's metrics here, then write
python experiments/cross-tokenizer/summarize.py                                    # write from the committed metrics
python experiments/cross-tokenizer/summarize.py --check                            # exit 1 if the README's block is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- results:begin (summarize.py) -->", "<!-- results:end -->"
RUNS = ["same_tokenizer_kd", "gold_8192", "uld_8192", "gold_1024"]
# the student's vocabulary, and the run that trained the CE-only control with that tokenizer
VOCAB = {"same_tokenizer_kd": 4096, "gold_8192": 8192, "uld_8192": 8192, "gold_1024": 1024}
CONTROL = {"gold_8192": "gold_8192", "uld_8192": "gold_8192", "gold_1024": "gold_1024"}
LABELS = {
    "same_tokenizer_kd": "KD, the teacher's tokenizer (forward KL + 0.5 CE)",
    "gold_8192": "cross-tokenizer KD: GOLD + 0.5 CE",
    "uld_8192": "cross-tokenizer KD: ULD + 0.5 CE",
    "gold_1024": "cross-tokenizer KD: GOLD + 0.5 CE",
}


def collect(runs_dir: Path) -> None:
    for name in RUNS:
        if (runs_dir / name / "metrics.json").exists():
            (HERE / f"metrics_{name}.json").write_text((runs_dir / name / "metrics.json").read_text())


def load() -> dict[str, dict]:
    found = {n: HERE / f"metrics_{n}.json" for n in RUNS}
    return {n: json.loads(p.read_text()) for n, p in found.items() if p.exists()}


def row(label: str, vocab: int, m: dict, who: str, speed: bool = True) -> str:
    agree = m.get(f"{who}.top1_agreement")
    step = m["train.wall_s"] / m["train.steps"] if speed and who == "student" else None
    cells = [
        label,
        f"{vocab:,}",
        f"{m[f'{who}.params'] / 1e6:.2f}M",
        f"**{m[f'{who}.bits_per_byte']:.4f}**",
        f"{m[f'{who}.val_ppl']:.2f}",
        f"{agree:.3f}" if agree is not None else "—",
        f"{step:.2f}" if step is not None else "—",
    ]
    return "| " + " | ".join(cells) + " |"


def closed(runs: dict, name: str) -> float | None:
    """(control − student) / (control − same-tokenizer KD student), on bits per byte."""
    same, control = runs.get("same_tokenizer_kd"), runs.get(CONTROL[name], {})
    if same is None or "baseline.bits_per_byte" not in control or name not in runs:
        return None
    c, s, target = control["baseline.bits_per_byte"], runs[name]["student.bits_per_byte"], same["student.bits_per_byte"]
    return (c - s) / (c - target)


def block(runs: dict[str, dict]) -> str:
    head = "| model | vocabulary | params | bits/byte | val ppl (own tokens) | top-1 agreement | s/step |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    any_run = next(iter(runs.values()), None)
    if any_run:
        lines.append(row("teacher (8 layers, from scratch)", 4096, any_run, "teacher"))
    for name in RUNS:
        if name not in runs:
            continue
        if CONTROL.get(name) == name:  # this run trained the control with its tokenizer
            lines.append(row("control: CE only, its own tokenizer", VOCAB[name], runs[name], "baseline", speed=False))
        lines.append(row(LABELS[name], VOCAB[name], runs[name], "student"))
    lines.append("")
    for name in RUNS[1:]:
        value = closed(runs, name)
        if value is not None:
            lines.append(
                f"- {LABELS[name].split(': ')[1]} at {VOCAB[name]:,}: closes **{value:.2f}** of the bits-per-byte gap "
                "from its control to the same-tokenizer KD student (goal ≥ 0.5)"
            )
    if any_run:
        lines += ["", f"{any_run['train.steps']} steps of 8 rows of the teacher's 256 tokens (the same text for every "
                  "model); bits per byte on the validation rows' text; top-1 agreement with the teacher on aligned "
                  "one-token spans of one string (same positions for the same tokenizer)."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    if args:
        collect(Path(args[0]))
    text = block(load())
    readme = README.read_text()
    current = readme.split(BEGIN, 1)[-1].split(END, 1)[0].strip() if BEGIN in readme else ""
    if "--check" in argv:
        return 0 if current == text else 1
    head, rest = readme.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
