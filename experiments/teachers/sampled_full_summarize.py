"""The full-size sampled-cache study's table: python experiments/teachers/sampled_full_summarize.py [OUT]

Reads ``OUT/train_<arm>_s<seed>/metrics.json`` and ``OUT/cache_<arm>_s<seed>/manifest.json`` of
``sampled_full.sh`` (arms ``topk``, ``sampled``) and copies them here under ``sampled_full/``; without a
fresh run it reads those copies. Prints one row per run, then each arm's mean and standard deviation
over its seeds, and the per-seed difference (sampled − top-k, same seed: same batches and student).
"""

import json
import re
import shutil
import statistics
import sys
from pathlib import Path

KEPT = Path(__file__).resolve().parent / "sampled_full"
ARMS = ("topk", "sampled")
METRICS = ("student.val_ppl", "student.ece")


def collect(out: Path) -> dict[tuple[str, int], dict]:
    """(arm, seed) -> metrics of every finished run, copied into KEPT (fresh runs win over kept copies)."""
    KEPT.mkdir(exist_ok=True)
    for run in sorted(out.glob("train_*_s*/metrics.json")) if out.is_dir() else []:
        shutil.copyfile(run, KEPT / f"metrics_{run.parent.name.removeprefix('train_')}.json")
    for manifest in sorted(out.glob("cache_*_s*/manifest.json")) if out.is_dir() else []:
        shutil.copyfile(manifest, KEPT / f"manifest_{manifest.parent.name.removeprefix('cache_')}.json")
    runs = {}
    for path in sorted(KEPT.glob("metrics_*_s*.json")):
        arm, seed = re.fullmatch(r"metrics_(\w+)_s(\d+)\.json", path.name).groups()
        runs[arm, int(seed)] = json.loads(path.read_text())
    return runs


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(out: Path) -> None:
    runs = collect(out)
    if not runs:
        print("(no finished runs)")
        return
    print("| cache | seed | student val ppl | student ECE | steps |")
    print("|---|---:|---:|---:|---:|")
    for (arm, seed), m in sorted(runs.items()):
        print(f"| {arm} | {seed} | {m['student.val_ppl']:.3f} | {m['student.ece']:.4f} | {m['train.steps']} |")
    print("\n| cache | runs | " + " | ".join(f"{k} (mean ± sd)" for k in METRICS) + " |")
    print("|---|---:|" + "---:|" * len(METRICS))
    for arm in ARMS:
        seeds = sorted(s for a, s in runs if a == arm)
        if seeds:
            cells = " | ".join(mean_sd([runs[arm, s][k] for s in seeds]) for k in METRICS)
            print(f"| {arm} | {len(seeds)} | {cells} |")
    paired = sorted(s for a, s in runs if a == "sampled" and ("topk", s) in runs)
    for k in METRICS:
        diffs = [runs["sampled", s][k] - runs["topk", s][k] for s in paired]
        if diffs:
            print(f"\nsampled − top-k, {k}, per seed {paired}: " + ", ".join(f"{d:+.4f}" for d in diffs))
    print()
    for path in sorted(KEPT.glob("manifest_*_s*.json")):
        m = json.loads(path.read_text())
        extra = m.get("extra", {})
        print(
            f"{path.stem.removeprefix('manifest_')} cache: {m.get('measured_bytes_per_token', m['bytes_per_token']):.2f} "
            f"bytes/token; teacher on that seed's validation rows: val ppl {extra.get('teacher.val_ppl', float('nan')):.3f}, "
            f"ECE {extra.get('teacher.ece', float('nan')):.4f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sampled_full"))
