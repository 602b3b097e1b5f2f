"""The quantization tables from the runs' metrics.json: python experiments/quantization/summarize.py OUT"""

import json
import sys
from pathlib import Path

MB = 1e6
MIB = 2**20


HERE = Path(__file__).resolve().parent


def load(out: Path, run: str) -> dict | None:
    """``OUT/<run>/metrics.json`` of a fresh run, else the copy committed here (``metrics_<run>.json``)."""
    path = out / run / "metrics.json"
    path = path if path.exists() else HERE / f"metrics_{run}.json"
    return json.loads(path.read_text()) if path.exists() else None


def hf_bf16_bytes(m: dict) -> float:
    return 2 * m["student.params"]  # the full-precision student's weights stored in bf16


def main(out: Path) -> None:
    full = load(out, "full")
    print("| student | weights | val ppl | top-1 agreement | size on disk |")
    print("|---|---|---:|---:|---:|")
    print(
        f"| full precision (bf16-mixed training) | bf16 | {full['student.val_ppl']:.2f} | "
        f"{full['student.top1_agreement']:.3f} | {hf_bf16_bytes(full) / MB:.2f} MB (bf16 weights) |"
    )
    for run, label in (
        ("ptq_int8_int4", "PTQ (round-to-nearest)"),
        ("qat_int8_int4", "QAT"),
        ("ptq_int8_int2", "PTQ (round-to-nearest)"),
        ("qat_int8_int2", "QAT"),
    ):
        m = load(out, run)
        if m is None:
            print(f"| {label} | {run} | (not run) | | |")
            continue
        bits = m["quant"]["weight_bits"]
        print(
            f"| {label} | int8 act., int{bits} weights (group {m['quant']['group_size']}) | "
            f"{m['student.val_ppl']:.2f} | {m['student.top1_agreement']:.3f} | "
            f"{m['quant.packed_bytes'] / MB:.2f} MB packed |"
        )
    print()
    print(
        "| student | trainable | val ppl | estimated training memory | resident memory growth in training | "
        "train tokens/s |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for run, label in (("full", "fully trained"), ("lora", "LoRA r=16, fp32 base"), ("qlora", "QLoRA r=16, NF4 base")):
        m = load(out, run)
        if m is None:
            continue
        growth = m.get("train.rss_growth_bytes")
        growth = f"{growth / MIB:.1f} MiB" if growth is not None else "—"
        print(
            f"| {label} | {'all' if run == 'full' else 'adapters'} | {m['student.val_ppl']:.2f} | "
            f"{m['memory.estimate_bytes'] / MIB:.1f} MiB | {growth} | {m['train.tokens_per_s']:,.0f} |"
        )
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
        print(
            f"| {load_in} | {m['teacher.memory_bytes'] / MB:.2f} MB | "
            f"{m['teacher.memory_saved_bytes'] / m['teacher.memory_bytes_unquantized']:.0%} | "
            f"{m['teacher.val_ppl_unquantized']:.3f} → {m['teacher.val_ppl']:.3f} | {m['student.val_ppl']:.2f} |"
        )


def plot(out: Path, path: Path = HERE / "results.png") -> None:
    """Validation perplexity against size on disk: full precision, PTQ and QAT at int4 and int2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = load(out, "full")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([hf_bf16_bytes(full) / MB], [full["student.val_ppl"]], color="black", label="full precision (bf16)")
    for kind, color in (("ptq", "tab:red"), ("qat", "tab:blue")):
        runs = [m for m in (load(out, f"{kind}_int8_int{b}") for b in (4, 2)) if m]
        xs, ys = [m["quant.packed_bytes"] / MB for m in runs], [m["student.val_ppl"] for m in runs]
        ax.plot(xs, ys, "o-", color=color, label=kind.upper())
        for m, x, y in zip(runs, xs, ys):
            ax.annotate(f"int{m['quant']['weight_bits']}", (x, y), textcoords="offset points", xytext=(6, 4))
    ax.axhline(full["teacher.val_ppl"], color="gray", linestyle="--", linewidth=0.8, label="teacher (fp32)")
    ax.set_xlabel("student size on disk (MB)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Quantized students: QAT vs PTQ (int8 activations)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    # no argument: the metrics committed here (what the runs wrote); --plot also writes results.png
    args = [a for a in sys.argv[1:] if a != "--plot"]
    main(Path(args[0] if args else "/nonexistent"))
    if "--plot" in sys.argv:
        plot(Path(args[0] if args else "/nonexistent"))
