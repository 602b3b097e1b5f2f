"""The results block of experiments/instruct/README.md, from the metrics files beside it.

python experiments/instruct/summarize.py experiments/instruct/runs   # copy each run's metrics here, then write
python experiments/instruct/summarize.py                             # write from the committed metrics
python experiments/instruct/summarize.py --check                     # exit 1 if the README's block is stale
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # experiments/: the README-block helper the studies share
import readme_block  # noqa: E402

README = HERE / "README.md"
BEGIN, END = "<!-- results:begin (summarize.py) -->", "<!-- results:end -->"
RUNS = ["forward_kl_seed0", "forward_kl_seed1", "gkd_seed0", "seqkd_seed0"]
COLUMNS = [
    ("val_ppl", "response ppl", "{:.2f}"),
    ("answer_compile_rate", "answers compile", "{:.3f}"),
    ("answer_empty_rate", "answers empty", "{:.3f}"),
    ("answer_first_line_match", "def line matches", "{:.3f}"),
]


def collect(runs_dir: Path) -> None:
    for name in RUNS:
        run = runs_dir / name
        if not (run / "metrics.json").exists():
            continue
        (HERE / f"metrics_{name}.json").write_text((run / "metrics.json").read_text())


def load() -> dict[str, dict]:
    return {
        n: json.loads((HERE / f"metrics_{n}.json").read_text()) for n in RUNS if (HERE / f"metrics_{n}.json").exists()
    }


def rows(runs: dict[str, dict]) -> list[tuple[str, dict]]:
    """(label, {column: value}) per model and seed: the teacher once, controls from the runs that trained one."""
    out = []
    pick = lambda m, who: {k: m[f"{who}.{k}"] for k, _, _ in COLUMNS if f"{who}.{k}" in m}  # noqa: E731
    if "forward_kl_seed0" in runs:
        out.append(("teacher (4 × 128, trained on the instructions)", pick(runs["forward_kl_seed0"], "teacher")))
    for name, seed in (("gkd_seed0", 0), ("forward_kl_seed1", 1)):
        if name in runs and "baseline.val_ppl" in runs[name]:
            out.append((f"SFT control (CE only), seed {seed}", pick(runs[name], "baseline")))
    labels = {
        "forward_kl_seed0": "forward KL + 0.5 CE, seed 0",
        "forward_kl_seed1": "forward KL + 0.5 CE, seed 1 (same teacher and split)",
        "gkd_seed0": "GKD (JSD β=0.5, λ=0.5), seed 0",
        "seqkd_seed0": "sequence-level KD (teacher's greedy answers, CE), seed 0",
    }
    out += [(labels[n], pick(runs[n], "student")) for n in RUNS if n in runs]
    return out


def block(runs: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(COLUMNS)]
    for label, values in rows(runs):
        cells = [fmt.format(values[k]) if k in values else "—" for k, _, fmt in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = [runs[n]["student.val_ppl"] for n in ("forward_kl_seed0", "forward_kl_seed1") if n in runs]
    if len(seeds) == 2:
        lines += ["", f"Seed-to-seed spread of the forward-KL student's response ppl: {abs(seeds[0] - seeds[1]):.2f} "
                  f"(mean {statistics.mean(seeds):.2f})."]  # fmt: skip
    controls = [
        runs[n]["baseline.val_ppl"] for n in ("forward_kl_seed0", "gkd_seed0") if "baseline.val_ppl" in runs.get(n, {})
    ]
    if len(controls) == 2:
        lines.append(
            f"The seed-0 control trained twice (two runs): response ppl {controls[0]:.4f} and {controls[1]:.4f}."
        )
    m = runs.get("forward_kl_seed0", {})
    if m:
        lines += ["", f"{m['train.steps']} steps of 8 × 256 tokens for every student and the control; "
                  f"{m.get('val.answer_prompts', 64)} held-out prompts answered greedily."]  # fmt: skip
    return "\n".join(lines)


def plot(runs: dict[str, dict], path: Path) -> None:
    """results.png: response perplexity and compile rate per row, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = zip(*rows(runs))
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.5 * len(labels) + 1.5), sharey=True)
    for ax, (key, title, _) in zip(axes, COLUMNS[:2]):
        ax.barh(range(len(labels)), [v.get(key, 0) for v in values], color="tab:blue")
        ax.set_title(title)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    return readme_block.summarize(
        argv,
        README,
        BEGIN,
        END,
        lambda: block(load()),
        collect,
        before_write=lambda: plot(load(), HERE / "results.png"),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
