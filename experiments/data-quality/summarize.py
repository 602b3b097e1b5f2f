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


def main(out: Path) -> None:
    base = json.loads((out / "none" / "metrics.json").read_text())
    print("| training data | documents kept | training tokens kept | student val ppl | Δ vs no filter | "
          "top-1 agreement | dropped, by reason |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for run, label in ROWS:
        path = out / run / "metrics.json"
        if not path.exists():
            print(f"| {label} | (not run) | | | | | |")
            continue
        m = json.loads(path.read_text())
        stats_path = out / run / "filter_stats.json"
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
        print(f"| {label} | {docs} | {tokens:,} ({100 * share:.0f}%) | {m['student.val_ppl']:.2f} | "
              f"{delta:+.2f} | {m['student.top1_agreement']:.3f} | {reasons} |")
    print(f"\nteacher val ppl {base['teacher.val_ppl']:.2f}; every run: {base['train.tokens']:,} training tokens "
          f"({base['train.steps']} steps), the same {base['val.tokens']:,} validation tokens")
    web = out / "web_filter_only" / "filter_stats.json"
    if web.exists():
        s = json.loads(web.read_text())
        print(f"web (prose) filters on the code corpus: kept {s['kept']} of {s['input']} documents")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exp_data_quality"))
