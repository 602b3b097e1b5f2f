"""The compact-cache study's table from the runs' files: python experiments/teachers/summarize.py [OUT]

Reads ``OUT/train_<format>/metrics.json`` and ``OUT/cache_<format>/manifest.json`` of a fresh run (and
copies them here as ``metrics_<format>.json`` / ``manifest_<format>.json``), else the copies committed here.
"""

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMATS = ("fp16", "compact")


def load(out: Path, fmt: str, kind: str) -> dict:
    fresh = out / (f"train_{fmt}/metrics.json" if kind == "metrics" else f"cache_{fmt}/manifest.json")
    kept = HERE / f"{kind}_{fmt}.json"
    if fresh.exists():
        shutil.copyfile(fresh, kept)
    return json.loads(kept.read_text())


def main(out: Path) -> None:
    metrics = {f: load(out, f, "metrics") for f in FORMATS}
    manifests = {f: load(out, f, "manifest") for f in FORMATS}
    print("| cache format | bytes/token | student val ppl | top-1 agreement | steps | train tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for f in FORMATS:
        m = metrics[f]
        print(
            f"| `{f}` | {manifests[f]['bytes_per_token']} | {m['student.val_ppl']:.3f} | "
            f"{m['student.top1_agreement']:.4f} | {m['train.steps']} | {m['train.tokens_per_s']:,.0f} |"
        )
    a, b = metrics["fp16"]["student.val_ppl"], metrics["compact"]["student.val_ppl"]
    print(f"\nval ppl compact vs fp16: {(b - a) / a:+.3%} (goal: within ±0.5%)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/nonexistent"))
