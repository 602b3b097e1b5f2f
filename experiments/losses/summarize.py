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


def main(out: Path) -> None:
    print("| objective | student val ppl | top-1 agreement | tokens/s | train wall s |")
    print("|---|---:|---:|---:|---:|")
    for run, label in ROWS:
        path = out / run / "metrics.json"
        if not path.exists():
            print(f"| {label} | (not run) | | | |")
            continue
        m = json.loads(path.read_text())
        print(f"| {label} | {m['student.val_ppl']:.2f} | {m['student.top1_agreement']:.3f} | "
              f"{m['train.tokens_per_s']:,.0f} | {m['train.wall_s']:.0f} |")
    t = json.loads((out / ROWS[0][0] / "metrics.json").read_text())
    print(f"\nteacher val ppl {t['teacher.val_ppl']:.2f} ({t['teacher.params'] / 1e6:.2f}M params), "
          f"student {t['student.params'] / 1e6:.2f}M params")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp_losses"))
