"""The sampled-cache study's tables from the runs' files: python experiments/teachers/sampled_summarize.py [OUT]

Reads ``OUT/train_<arm>/metrics.json``, ``OUT/cache_<arm>/manifest.json`` (arms ``topk``, ``sampled``) and
``OUT/bias_<student>.json`` (``benchmarks/sampled_cache.py --json``) of a fresh run and copies them here as
``sampled_metrics_<arm>.json``, ``sampled_manifest_<arm>.json``, ``sampled_bias_<student>.json``; without
a fresh run it reads the copies committed here. Bytes per token are the shard files' bytes over their
tokens for both arms (``measured_bytes_per_token``), so the two layouts compare on the same measure.
"""

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("topk", "sampled")
STUDENTS = ("pruned", "trained")


def load(fresh: Path, kept_name: str) -> dict | None:
    kept = HERE / kept_name
    if fresh.exists():
        shutil.copyfile(fresh, kept)
    return json.loads(kept.read_text()) if kept.exists() else None


def measured(out: Path, arm: str, manifest: dict) -> float:
    """The manifest's measured bytes per token, or measured now from the shard files (older writers
    recorded only the fp16 payload)."""
    if "measured_bytes_per_token" in manifest:
        return manifest["measured_bytes_per_token"]
    from distill.teacher.cache_manifest import measured_bytes_per_token

    return measured_bytes_per_token(out / f"cache_{arm}", manifest)


def training_table(out: Path) -> None:
    rows = []
    done = [
        (out / f"train_{arm}/metrics.json").exists() or (HERE / f"sampled_metrics_{arm}.json").exists() for arm in ARMS
    ]
    if not all(done):  # a half-finished run copies nothing
        print("(the training runs are not finished)")
        return
    for arm in ARMS:
        metrics = load(out / f"train_{arm}/metrics.json", f"sampled_metrics_{arm}.json")
        manifest = load(out / f"cache_{arm}/manifest.json", f"sampled_manifest_{arm}.json")
        if "measured_bytes_per_token" not in manifest and (out / f"cache_{arm}").is_dir():
            manifest["measured_bytes_per_token"] = measured(out, arm, manifest)
            (HERE / f"sampled_manifest_{arm}.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        rows.append((arm, metrics, manifest))
    print("| cache | slots | bytes/token (files) | student val ppl | student ECE | top-1 agreement | steps |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm, m, man in rows:
        what = f"top-{man['top_k']} (fp16)" if arm == "topk" else f"{man['samples']} draws (ids + counts)"
        print(
            f"| {what} | {man['top_k']} | {man.get('measured_bytes_per_token', man['bytes_per_token']):.2f} | "
            f"{m['student.val_ppl']:.3f} | {m['student.ece']:.4f} | {m['student.top1_agreement']:.4f} | "
            f"{m['train.steps']} |"
        )
    teacher = rows[0][2]["extra"]
    print(f"\nteacher: val ppl {teacher['teacher.val_ppl']:.3f}, ECE {teacher.get('teacher.ece', float('nan')):.4f}")


def bias_table(out: Path) -> None:
    for student in STUDENTS:
        bias = load(out / f"bias_{student}.json", f"sampled_bias_{student}.json")
        if bias is None:
            continue
        print(f"\nstudent {student}, {bias['positions']:,} validation positions, vocab {bias['vocab']}:\n")
        print("| bytes/token | cache | slots | cos/position | rel. err/position | cos LM-head | rel. err LM-head |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for r in bias["rows"]:
            print(
                f"| {r['bytes']} | {r['method']} | {r['slots']} | {r['token_cos']:.4f} | {r['token_rel_err']:.3f} | "
                f"{r['head_cos']:.4f} | {r['head_rel_err']:.4f} |"
            )


if __name__ == "__main__":
    where = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sampled_exp")
    training_table(where)
    bias_table(where)
