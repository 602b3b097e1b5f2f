"""The loss study's table from the runs' metrics.json files: python experiments/losses/summarize.py OUT"""

import json
import sys
from pathlib import Path

ROWS = [
    ("forward_kl", "forward KL + 0.5 CE (default)"),
    ("reverse_kl", "reverse KL + 0.5 CE"),
    ("jsd", "JSD(β=0.5) + 0.5 CE"),
    ("tvd", "TVD + 0.5 CE"),
    ("cache_top64", "forward KL + 0.5 CE, top-64 cache (bucket tail)"),
    ("gkd", "JSD(β=0.5) + 0.5 CE, on-policy λ=0.5 (GKD)"),
    ("hidden", "forward KL + 0.5 CE + hidden-state cosine"),
]


HERE = Path(__file__).resolve().parent


def find(out: Path, run: str) -> Path:
    """``OUT/<run>/metrics.json`` of a fresh run, else the copy committed here (``metrics_<run>.json``)."""
    fresh = out / run / "metrics.json"
    return fresh if fresh.exists() else HERE / f"metrics_{run}.json"


def main(out: Path) -> None:
    print("| objective | student val ppl | top-1 agreement | tokens/s | train wall s |")
    print("|---|---:|---:|---:|---:|")
    for run, label in ROWS:
        path = find(out, run)
        if not path.exists():
            print(f"| {label} | (no metrics.json) | | | |")
            continue
        m = json.loads(path.read_text())
        print(
            f"| {label} | {m['student.val_ppl']:.2f} | {m['student.top1_agreement']:.3f} | "
            f"{m['train.tokens_per_s']:,.0f} | {m['train.wall_s']:.0f} |"
        )
    t = json.loads(find(out, ROWS[0][0]).read_text())
    print(
        f"\nteacher val ppl {t['teacher.val_ppl']:.2f} ({t['teacher.params'] / 1e6:.2f}M params), "
        f"student {t['student.params'] / 1e6:.2f}M params"
    )


if __name__ == "__main__":
    # no argument: the metrics committed here
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/nonexistent"))
