"""Tables for the pruning study from its run dirs: python experiments/pruning/summarize.py OUT"""

import csv
import json
import math
import sys
from pathlib import Path

PRUNED = ["every_other_layer", "depth", "width", "wanda_50", "magnitude_50", "wanda_2of4", "magnitude_2of4"]
TRAINED = ["every_other_layer", "depth", "width", "moe_upcycle_top1"]


HERE = Path(__file__).resolve().parent


def find(fresh: Path, committed: str) -> Path:
    """A fresh run's file, else the copy committed here (what that run wrote)."""
    return fresh if fresh.exists() else HERE / committed


def val_curve(out: Path, name: str) -> list[tuple[int, float]]:
    """(step, val ppl) from the CSV logger's val/ce column."""
    path = find(out / "train" / name / "csv" / "metrics.csv", f"val_curve_{name}.csv")
    rows = list(csv.DictReader(path.open()))
    return [(int(r["step"]), math.exp(float(r["val/ce"]))) for r in rows if r.get("val/ce")]


def main(out: Path) -> None:
    print("| student | params | / teacher | val ppl right after pruning | top-1 agreement |")
    print("|---|---:|---:|---:|---:|")
    for name in PRUNED:
        path = find(out / "prune" / name / "pruning_report.json", f"pruning_report_{name}.json")
        if path.exists():
            r = json.loads(path.read_text())
            print(
                f"| {name} | {r['student.params'] / 1e6:.2f}M | {r['student.params_ratio']:.3f} | "
                f"{r['student.val_ppl_pruned']:,.1f} | {r['student.top1_agreement_pruned']:.3f} |"
            )
    base = json.loads(find(out / "train" / TRAINED[0] / "metrics.json", f"metrics_{TRAINED[0]}.json").read_text())
    target, steps = base["baseline.val_ppl"], base["train.steps"]
    print(f"\nteacher val ppl {base['teacher.val_ppl']:.2f}; from-scratch control after {steps} steps: {target:.2f}\n")
    print(
        "| student | params (active per token) | val ppl after distillation | top-1 agreement | "
        "steps to reach the control's final ppl | tokens saved |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in TRAINED:
        metrics = find(out / "train" / name / "metrics.json", f"metrics_{name}.json")
        if not metrics.exists():
            continue
        m = json.loads(metrics.read_text())
        curve = val_curve(out, name)
        # the CSV's step is the 0-based global step: validation after n steps is logged at n - 1
        reach = next((s + 1 for s, ppl in curve if ppl <= target), None)
        first = reach is not None and reach == curve[0][0] + 1  # already there at the first check: a bound
        saved = (">= " if first else "") + f"{steps / reach:.0f}x" if reach else "—"
        report = find(out / "train" / name / "pruning_report.json", f"pruning_report_train_{name}.json")
        active = json.loads(report.read_text()).get("params_active") if report.exists() else None
        params = f"{m['student.params'] / 1e6:.2f}M" + (f" ({active / 1e6:.2f}M)" if active else "")
        print(
            f"| {name} | {params} | {m['student.val_ppl']:.2f} | {m['student.top1_agreement']:.3f} | "
            f"{reach or '—'} | {saved} |"
        )


def plot(out: Path, path: Path = HERE / "results.png") -> None:
    """Validation perplexity during distillation of each structured student, against the control's final."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = json.loads(find(out / "train" / TRAINED[0] / "metrics.json", f"metrics_{TRAINED[0]}.json").read_text())
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in TRAINED:
        if find(out / "train" / name / "csv" / "metrics.csv", f"val_curve_{name}.csv").exists():
            steps, ppl = zip(*[(s + 1, p) for s, p in val_curve(out, name)])
            ax.plot(steps, ppl, label=name)
    ax.axhline(
        base["baseline.val_ppl"], color="gray", linestyle="--", label=f"control after {base['train.steps']} steps"
    )
    ax.axhline(base["teacher.val_ppl"], color="black", linestyle=":", label="teacher")
    ax.set_xlabel("distillation step")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("Pruned students of the same size, distilled")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    # no argument: the files committed here (what the runs wrote); --plot also writes results.png
    args = [a for a in sys.argv[1:] if a != "--plot"]
    main(Path(args[0] if args else "/nonexistent"))
    if "--plot" in sys.argv:
        plot(Path(args[0] if args else "/nonexistent"))
