"""The quantization tables from the runs' metrics.json: python experiments/quantization/summarize.py OUT"""

import json
import sys
from pathlib import Path

MB = 1e6
MIB = 2**20


def load(out: Path, run: str) -> dict | None:
    path = out / run / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def hf_bf16_bytes(m: dict) -> float:
    return 2 * m["student.params"]  # the full-precision student's weights stored in bf16


def main(out: Path) -> None:
    full = load(out, "full")
    print("| student | weights | val ppl | top-1 agreement | size on disk |")
    print("|---|---|---:|---:|---:|")
    print(f"| full precision (bf16-mixed training) | bf16 | {full['student.val_ppl']:.2f} | "
          f"{full['student.top1_agreement']:.3f} | {hf_bf16_bytes(full) / MB:.2f} MB (bf16 weights) |")
    for run, label in (("ptq_int8_int4", "PTQ (round-to-nearest)"), ("qat_int8_int4", "QAT"),
                       ("ptq_int8_int2", "PTQ (round-to-nearest)"), ("qat_int8_int2", "QAT")):
        m = load(out, run)
        if m is None:
            print(f"| {label} | {run} | (not run) | | |")
            continue
        bits = m["quant"]["weight_bits"]
        print(f"| {label} | int8 act., int{bits} weights (group {m['quant']['group_size']}) | "
              f"{m['student.val_ppl']:.2f} | {m['student.top1_agreement']:.3f} | "
              f"{m['quant.packed_bytes'] / MB:.2f} MB packed |")
    print()
    print("| student | trainable | val ppl | estimated training memory | resident memory growth in training | "
          "train tokens/s |")
    print("|---|---|---:|---:|---:|---:|")
    for run, label in (("full", "fully trained"), ("lora", "LoRA r=16, fp32 base"), ("qlora", "QLoRA r=16, NF4 base")):
        m = load(out, run)
        if m is None:
            continue
        growth = m.get("train.rss_growth_bytes")
        growth = f"{growth / MIB:.1f} MiB" if growth is not None else "—"
        print(f"| {label} | {'all' if run == 'full' else 'adapters'} | {m['student.val_ppl']:.2f} | "
              f"{m['memory.estimate_bytes'] / MIB:.1f} MiB | {growth} | {m['train.tokens_per_s']:,.0f} |")
    print()
    print("| teacher.load_in | teacher memory | saved | teacher val ppl (before → after) | student val ppl |")
    print("|---|---:|---:|---:|---:|")
    any_run = next((m for m in (load(out, f"teacher_{x}") for x in ("bf16", "8bit", "4bit")) if m), None)
    fp32_bytes = f"{any_run['teacher.memory_bytes_unquantized'] / MB:.2f} MB" if any_run else "—"
    print(f"| fp32 (default) | {fp32_bytes} | — | {full['teacher.val_ppl']:.3f} | {full['student.val_ppl']:.2f} |")
    for load_in in ("bf16", "8bit", "4bit"):
        m = load(out, f"teacher_{load_in}")
        if m is None:
            continue
        print(f"| {load_in} | {m['teacher.memory_bytes'] / MB:.2f} MB | "
              f"{m['teacher.memory_saved_bytes'] / m['teacher.memory_bytes_unquantized']:.0%} | "
              f"{m['teacher.val_ppl_unquantized']:.3f} → {m['teacher.val_ppl']:.3f} | {m['student.val_ppl']:.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp_quant"))
