"""Tables for the pruning study from its run dirs: python experiments/pruning/summarize.py OUT"""

import csv
import json
import math
import sys
from pathlib import Path

PRUNED = ["every_other_layer", "depth", "width", "wanda_50", "magnitude_50", "wanda_2of4", "magnitude_2of4"]
TRAINED = ["every_other_layer", "depth", "width", "moe_upcycle_top1"]


def val_curve(run: Path) -> list[tuple[int, float]]:
    """(step, val ppl) from the CSV logger's val/ce column."""
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    return [(int(r["step"]), math.exp(float(r["val/ce"]))) for r in rows if r.get("val/ce")]


def main(out: Path) -> None:
    print("| student | params | / teacher | val ppl right after pruning | top-1 agreement |")
    print("|---|---:|---:|---:|---:|")
    for name in PRUNED:
        path = out / "prune" / name / "pruning_report.json"
        if path.exists():
            r = json.loads(path.read_text())
            print(f"| {name} | {r['student.params'] / 1e6:.2f}M | {r['student.params_ratio']:.3f} | "
                  f"{r['student.val_ppl_pruned']:,.1f} | {r['student.top1_agreement_pruned']:.3f} |")
    base = json.loads((out / "train" / TRAINED[0] / "metrics.json").read_text())
    target, steps = base["baseline.val_ppl"], base["train.steps"]
    print(f"\nteacher val ppl {base['teacher.val_ppl']:.2f}; from-scratch control after {steps} steps: {target:.2f}\n")
    print("| student | params (active per token) | val ppl after distillation | top-1 agreement | "
          "steps to reach the control's final ppl | tokens saved |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in TRAINED:
        run = out / "train" / name
        if not (run / "metrics.json").exists():
            continue
        m = json.loads((run / "metrics.json").read_text())
        curve = val_curve(run)
        # the CSV's step is the 0-based global step: validation after n steps is logged at n - 1
        reach = next((s + 1 for s, ppl in curve if ppl <= target), None)
        first = reach is not None and reach == curve[0][0] + 1  # already there at the first check: a bound
        saved = (">= " if first else "") + f"{steps / reach:.0f}x" if reach else "—"
        report = run / "pruning_report.json"
        active = json.loads(report.read_text()).get("params_active") if report.exists() else None
        params = f"{m['student.params'] / 1e6:.2f}M" + (f" ({active / 1e6:.2f}M)" if active else "")
        print(f"| {name} | {params} | {m['student.val_ppl']:.2f} | {m['student.top1_agreement']:.3f} | "
              f"{reach or '—'} | {saved} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp_pruning"))
