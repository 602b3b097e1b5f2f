"""The headline table of the top-level README: one row per study, its key result, every number read
from the metrics files committed in that study's folder (what distill-train wrote).

    python experiments/headline.py            # prints the markdown table
    python experiments/headline.py --check    # exits 1 if README.md's table differs from it
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import readme_block  # experiments/readme_block.py, beside this script

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
BEGIN, END = "<!-- headline:begin (experiments/headline.py) -->", "<!-- headline:end -->"


def load(study: str, name: str) -> dict | None:
    path = HERE / study / name
    return json.loads(path.read_text()) if path.exists() else None


def quickstart() -> str | None:
    m = load("quickstart", "metrics.json")
    if not m:
        return None
    return (
        f"student at {m['student.params'] / m['teacher.params']:.2f}× the teacher's parameters: val ppl "
        f"{m['student.val_ppl']:.2f} vs teacher {m['teacher.val_ppl']:.2f} and from-scratch control "
        f"{m['baseline.val_ppl']:.2f} (gap closed {m['gap_closed']:.2f}), {m['train.tokens']:,} tokens"
    )


def study_runs(study: str) -> dict[str, dict]:
    """A study's runs: ``metrics_<name>.json`` files by name."""
    return {
        p.stem.removeprefix("metrics_"): json.loads(p.read_text())
        for p in sorted((HERE / study).glob("metrics_*.json"))
    }


def losses() -> str | None:
    runs = study_runs("losses")
    live, cache = runs.get("forward_kl"), runs.get("cache_top64")
    if not (live and cache):
        return None
    name, best = min(runs.items(), key=lambda kv: kv[1]["student.val_ppl"])
    return (
        f"best objective `{name}`: val ppl {best['student.val_ppl']:.2f} (forward KL {live['student.val_ppl']:.2f}); "
        f"offline top-64 teacher cache vs live teacher: {cache['student.val_ppl']:.2f} vs "
        f"{live['student.val_ppl']:.2f} with no teacher forward in training"
    )


def pruning() -> str | None:
    runs = study_runs("pruning")
    if "every_other_layer" not in runs:
        return None
    control = runs["every_other_layer"]["baseline.val_ppl"]
    reach = {}
    for name in runs:  # first validation step at or below the control's final perplexity
        curve = HERE / "pruning" / f"val_curve_{name}.csv"
        if curve.exists():
            rows = list(csv.DictReader(curve.open()))
            reach[name] = next(
                (int(r["step"]) + 1 for r in rows if r.get("val/ce") and math.exp(float(r["val/ce"])) <= control), None
            )
    name, best = min(runs.items(), key=lambda kv: kv[1]["student.val_ppl"])
    steps = [v for v in reach.values() if v]
    text = (
        f"best student after {best['train.steps']} steps: `{name}`, val ppl {best['student.val_ppl']:.2f} "
        f"(from-scratch control {control:.2f})"
    )
    if steps:
        text += f"; every pruned student passes the control's final ppl within {min(steps)}–{max(steps)} steps"
    return text


def data_quality() -> str | None:
    base = load("data-quality", "metrics_none.json")
    if not base:
        return None
    runs = {k: v for k, v in study_runs("data-quality").items() if k not in ("none", "reference_model")}
    name, best = min(runs.items(), key=lambda kv: kv[1]["student.val_ppl"])
    kept = best["data.train_tokens_available"] / base["data.train_tokens_available"]
    return (
        f"best filter `{name}`: val ppl {best['student.val_ppl']:.2f} vs {base['student.val_ppl']:.2f} "
        f"unfiltered ({best['student.val_ppl'] - base['student.val_ppl']:+.2f}), keeping {kept:.0%} of the "
        f"training tokens, same token budget"
    )


def quantization() -> str | None:
    full, qat, ptq = (load("quantization", f"metrics_{r}.json") for r in ("full", "qat_int8_int2", "ptq_int8_int2"))
    if not (full and qat and ptq):
        return None
    return (
        f"int2 weights (int8 activations): QAT val ppl {qat['student.val_ppl']:.2f} vs PTQ "
        f"{ptq['student.val_ppl']:.2f} vs full precision {full['student.val_ppl']:.2f}, at "
        f"{qat['quant.packed_bytes'] / (2 * full['student.params']):.2f}× the bf16 size on disk"
    )


def minilm_embed() -> str | None:
    m = load("minilm_embed", "metrics.json")
    if not m:
        return None
    found = {
        k: v
        for k, v in m.items()
        if isinstance(v, (int, float)) and any(w in k for w in ("cosine", "overlap", "speed", "params_ratio"))
    }
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(found.items())) or None


def instruct() -> str | None:
    runs = study_runs("instruct")
    kl, gkd = runs.get("forward_kl_seed0"), runs.get("gkd_seed0")
    if not (kl and gkd and "baseline.answer_compile_rate" in gkd):
        return None
    best, m = min(((n, r) for n, r in runs.items() if n.endswith("seed0")), key=lambda kv: kv[1]["student.val_ppl"])
    return (
        f"chat student, response ppl: best `{best.removesuffix('_seed0')}` {m['student.val_ppl']:.2f} vs SFT control "
        f"{gkd['baseline.val_ppl']:.2f} (teacher {kl['teacher.val_ppl']:.2f}); greedy answers that compile: "
        f"{m['student.answer_compile_rate']:.2f} vs {gkd['baseline.answer_compile_rate']:.2f}"
    )


def cross_tokenizer() -> str | None:
    runs = study_runs("cross-tokenizer")
    same, control = runs.get("same_tokenizer_kd"), runs.get("same_tokenizer_control")
    if not (same and control and "gold_8192" in runs):
        return None
    same_gain = control["student.bits_per_byte"] - same["student.bits_per_byte"]
    gains = [
        f"{vocab}: {g:+.3f} ({g / same_gain:.2f}×)"
        for vocab, name in (
            ("4,096 SentencePiece-style", "gold_4096_sp"),
            ("8,192", "gold_8192"),
            ("1,024", "gold_1024"),
        )
        if name in runs
        for g in [runs[name]["baseline.bits_per_byte"] - runs[name]["student.bits_per_byte"]]
    ]
    return (
        f"student with its own tokenizer (teacher's: BPE 4,096), GOLD's bits/byte gain over its CE control at "
        f"{'; at '.join(gains)}; × the same-tokenizer KD gain ({same_gain:+.3f})"
    )


def teachers() -> str | None:
    runs = {f: load("teachers", f"metrics_{f}.json") for f in ("fp16", "compact")}
    sizes = {f: load("teachers", f"manifest_{f}.json") for f in ("fp16", "compact")}
    if not all(runs.values()) or not all(sizes.values()):
        return None
    a, b = runs["fp16"]["student.val_ppl"], runs["compact"]["student.val_ppl"]
    return (
        f"compact top-64 cache at {sizes['compact']['bytes_per_token']:.0f} bytes/token vs "
        f"{sizes['fp16']['bytes_per_token']:.0f} (fp16): student val ppl {b:.2f} vs {a:.2f} ({(b - a) / a:+.2%}), "
        f"{runs['fp16']['train.steps']} steps"
    )


STUDIES = [
    ("quickstart", quickstart),
    ("losses", losses),
    ("pruning", pruning),
    ("data-quality", data_quality),
    ("quantization", quantization),
    ("minilm_embed", minilm_embed),
    ("instruct", instruct),
    ("cross-tokenizer", cross_tokenizer),
    ("teachers", teachers),
]


def table() -> str:
    """Known studies first, then any other folder with a README; a folder without one is not a study yet."""
    known = dict(STUDIES)
    others = sorted(p.name for p in HERE.iterdir() if p.is_dir() and p.name not in known)
    lines = ["| study | key result (from the study's committed metrics) |", "|---|---|"]
    for study in [*known, *others]:
        if not (HERE / study / "README.md").exists():
            continue
        text = (known[study]() if study in known else None) or "see its README"
        lines.append(f"| [{study}](experiments/{study}/README.md) | {text} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = table()
    if "--check" in argv:
        return 0 if readme_block.current(README, BEGIN, END) == text else 1
    if "--write" in argv:  # replace the block between the markers in README.md
        readme_block.write(README, BEGIN, END, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
