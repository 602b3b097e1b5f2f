"""The data-quality table from the runs' metrics.json and filter_stats.json:
python experiments/data-quality/summarize.py OUT"""

import json
import sys
from pathlib import Path

ROWS = [
    ("none", "no filter"),
    ("code", "code (StarCoder/codeparrot rules)"),
    ("dedup", "dedup (exact + MinHash)"),
    ("code_dedup", "code + dedup"),
    ("teacher_ppl", "teacher perplexity band 10–90%"),
    ("teacher_ppl_low", "teacher perplexity 0–70% (drop the hardest)"),
    ("reference_ratio", "reference ratio, top 50%; reference: the distilled student"),
    ("reference_ratio_scratch", "reference ratio, top 50%; reference: a 1M LM from scratch (MiniPLM)"),
]


HERE = Path(__file__).resolve().parent


def find(out: Path, run: str, kind: str = "metrics") -> Path:
    """``OUT/<run>/<kind>.json`` of a fresh run, else the copy committed here (``<kind>_<run>.json``)."""
    fresh = out / run / f"{kind}.json"
    return fresh if fresh.exists() else HERE / f"{kind}_{run}.json"


def main(out: Path) -> None:
    base = json.loads(find(out, "none").read_text())
    print(
        "| training data | documents kept | training tokens kept | student val ppl | Δ vs no filter | "
        "top-1 agreement | dropped, by reason |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for run, label in ROWS:
        path = find(out, run)
        if not path.exists():
            print(f"| {label} | (not run) | | | | | |")
            continue
        m = json.loads(path.read_text())
        stats_path = find(out, run, "filter_stats")
        docs, reasons = "all", "—"
        if stats_path.exists():
            s = json.loads(stats_path.read_text())
            docs = f"{s['kept']:,} / {s['input']:,}"
            dropped = {}
            for stage in s["stages"].values():
                for k, v in stage["dropped"].items():
                    dropped[k] = dropped.get(k, 0) + v
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1])) or "—"
        tokens = m["data.train_tokens_available"]
        share = tokens / base["data.train_tokens_available"]
        delta = m["student.val_ppl"] - base["student.val_ppl"]
        print(
            f"| {label} | {docs} | {tokens:,} ({100 * share:.0f}%) | {m['student.val_ppl']:.2f} | "
            f"{delta:+.2f} | {m['student.top1_agreement']:.3f} | {reasons} |"
        )
    print(
        f"\nteacher val ppl {base['teacher.val_ppl']:.2f}; every run: {base['train.tokens']:,} training tokens "
        f"({base['train.steps']} steps), the same {base['val.tokens']:,} validation tokens"
    )
    web = out / "web_filter_only" / "filter_stats.json"
    web = web if web.exists() else HERE / "filter_stats_web.json"
    if web.exists():
        s = json.loads(web.read_text())
        print(f"web (prose) filters on the code corpus: kept {s['kept']} of {s['input']} documents")


def plot(out: Path, path: Path = HERE / "results.png") -> None:
    """Student val ppl change vs no filter (bars) beside the share of training tokens kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = json.loads(find(out, "none").read_text())
    rows = [(label, json.loads(find(out, run).read_text())) for run, label in ROWS[1:] if find(out, run).exists()]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(rows) + 1.5))
    deltas = [m["student.val_ppl"] - base["student.val_ppl"] for _, m in rows]
    ax.barh(range(len(rows)), deltas, color=["tab:green" if d < 0 else "tab:red" for d in deltas])
    for i, (_, m) in enumerate(rows):
        kept = m["data.train_tokens_available"] / base["data.train_tokens_available"]
        ax.text(max(deltas[i], 0), i, f"  {kept:.0%} of tokens kept", va="center", ha="left")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(min(deltas + [0]) - 0.5, max(deltas + [0]) + 4.5)  # room for the labels
    ax.set_xlabel(f"student val ppl − no filter ({base['student.val_ppl']:.2f}); lower is better")
    ax.set_title("Data filters at the same 819,200-token budget")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    # no argument: the metrics committed here (what the runs wrote); --plot also writes results.png
    args = [a for a in sys.argv[1:] if a != "--plot"]
    main(Path(args[0] if args else "/nonexistent"))
    if "--plot" in sys.argv:
        plot(Path(args[0] if args else "/nonexistent"))
