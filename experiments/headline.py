"""The headline table of the top-level README: one row per study, its key result, every number read
from the metrics files committed in that study's folder (what distill-train wrote).

    python experiments/headline.py            # prints the markdown table
    python experiments/headline.py --check    # exits 1 if README.md's table differs from it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    return (f"student at {m['student.params'] / m['teacher.params']:.2f}× the teacher's parameters: val ppl "
            f"{m['student.val_ppl']:.2f} vs teacher {m['teacher.val_ppl']:.2f} and from-scratch control "
            f"{m['baseline.val_ppl']:.2f} (gap closed {m['gap_closed']:.2f}), {m['train.tokens']:,} tokens")


def losses() -> str | None:
    live, cache = load("losses", "metrics_forward_kl.json"), load("losses", "metrics_cache_top64.json")
    if not (live and cache):
        return None
    return (f"offline top-64 teacher cache vs live teacher: val ppl {cache['student.val_ppl']:.2f} vs "
            f"{live['student.val_ppl']:.2f}, at {cache['train.tokens_per_s']:,.0f} vs "
            f"{live['train.tokens_per_s']:,.0f} training tokens/s (runs on a shared machine)")


def pruning() -> str | None:
    m = load("pruning", "metrics_every_other_layer.json")
    if not m:
        return None
    return (f"every-other-layer student ({m['student.params'] / 1e6:.2f}M, {m['student.params_ratio']:.2f}× the "
            f"teacher) distilled: val ppl {m['student.val_ppl']:.2f} vs {m['baseline.val_ppl']:.2f} for the same "
            f"architecture from scratch at {m['train.steps']} steps")


def data_quality() -> str | None:
    base = load("data-quality", "metrics_none.json")
    if not base:
        return None
    runs = {p.stem.removeprefix("metrics_"): json.loads(p.read_text())
            for p in sorted((HERE / "data-quality").glob("metrics_*.json"))
            if p.stem not in ("metrics_none", "metrics_reference_model")}
    name, best = min(runs.items(), key=lambda kv: kv[1]["student.val_ppl"])
    kept = best["data.train_tokens_available"] / base["data.train_tokens_available"]
    return (f"best filter `{name}`: val ppl {best['student.val_ppl']:.2f} vs {base['student.val_ppl']:.2f} "
            f"unfiltered ({best['student.val_ppl'] - base['student.val_ppl']:+.2f}), keeping {kept:.0%} of the "
            f"training tokens, same token budget")


def quantization() -> str | None:
    full, qat, ptq = (load("quantization", f"metrics_{r}.json") for r in ("full", "qat_int8_int2", "ptq_int8_int2"))
    if not (full and qat and ptq):
        return None
    return (f"int2 weights (int8 activations): QAT val ppl {qat['student.val_ppl']:.2f} vs PTQ "
            f"{ptq['student.val_ppl']:.2f} vs full precision {full['student.val_ppl']:.2f}, at "
            f"{qat['quant.packed_bytes'] / (2 * full['student.params']):.2f}× the bf16 size on disk")


def minilm_embed() -> str | None:
    m = load("minilm_embed", "metrics.json")
    if not m:
        return None
    found = {k: v for k, v in m.items() if isinstance(v, (int, float)) and any(
        w in k for w in ("cosine", "overlap", "speed", "params_ratio"))}
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(found.items())) or None


STUDIES = [("quickstart", quickstart), ("losses", losses), ("pruning", pruning), ("data-quality", data_quality),
           ("quantization", quantization), ("minilm_embed", minilm_embed)]


def table() -> str:
    lines = ["| study | key result (from the study's committed metrics) |", "|---|---|"]
    for study, result in STUDIES:
        if not (HERE / study).is_dir():
            continue
        text = result() or "see its README"
        lines.append(f"| [{study}](experiments/{study}/README.md) | {text} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = table()
    if "--check" in argv:
        readme = README.read_text()
        current = readme.split(BEGIN, 1)[-1].split(END, 1)[0].strip() if BEGIN in readme else ""
        return 0 if current == text else 1
    if "--write" in argv:  # replace the block between the markers in README.md
        readme = README.read_text()
        head, rest = readme.split(BEGIN, 1)
        README.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
