"""The results block of experiments/cross-tokenizer/README.md, from the metrics files beside it.

python experiments/cross-tokenizer/summarize.py experiments/cross-tokenizer/runs   # copy each run's metrics here, then write
python experiments/cross-tokenizer/summarize.py                                    # write from the committed metrics
python experiments/cross-tokenizer/summarize.py --check                            # exit 1 if the README's block is stale
python experiments/cross-tokenizer/summarize.py /tmp/xtok_bf16 --bf16               # the bf16 set (this machine), its own block
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # experiments/: the README-block helper the studies share
import readme_block  # noqa: E402

README = HERE / "README.md"
# two sets of runs: fp32 on an earlier machine (metrics_<run>.json), bf16 autocast on a later one (--bf16)
BF16 = "--bf16" in sys.argv
PREFIX = "metrics_bf16_" if BF16 else "metrics_"
BEGIN = "<!-- results-bf16:begin (summarize.py --bf16) -->" if BF16 else "<!-- results:begin (summarize.py) -->"
END = "<!-- results-bf16:end -->" if BF16 else "<!-- results:end -->"
SP, L3 = "4,096 SentencePiece-style", "4,096 Llama 3-style"
KD = "cross-tokenizer KD:"
# each run: (the student's vocabulary, its row's label, the term's short name, the run that trained its CE-only
# control with that tokenizer: GOLD runs train their own, None; the same-tokenizer runs have neither)
SPECS = {
    "same_tokenizer_control": ("4,096", "control: CE only, the teacher's tokenizer", None, None),
    "same_tokenizer_kd": ("4,096", "KD with the teacher's tokenizer: forward KL + 0.5 CE", None, None),
    "gold_4096_sp": (SP, f"{KD} GOLD + 0.5 CE", "GOLD", None),
    "gold_4096_sp_o2o": (SP, f"{KD} GOLD on one-to-one spans + 0.5 CE", "GOLD (one-to-one)", "gold_4096_sp"),
    "alm_4096_sp": (SP, f"{KD} ALM + 0.5 CE", "ALM", "gold_4096_sp"),
    "alm_words_4096_sp": (SP, f"{KD} ALM on word chunks + 0.5 CE", "ALM (word chunks)", "gold_4096_sp"),
    "prefix_kl_4096_sp": (SP, f"{KD} prefix KL + 0.5 CE", "prefix KL", "gold_4096_sp"),
    "prefix_kl_cut_4096_sp": (SP, f"{KD} prefix KL, cuts=both + 0.5 CE", "prefix KL (cuts=both)", "gold_4096_sp"),
    "gold_4096_llama3": (L3, f"{KD} GOLD + 0.5 CE", "GOLD", None),
    "gold_4096_llama3_o2o": (L3, f"{KD} GOLD on one-to-one spans + 0.5 CE", "GOLD (one-to-one)", "gold_4096_llama3"),
    "alm_4096_llama3": (L3, f"{KD} ALM + 0.5 CE", "ALM", "gold_4096_llama3"),
    "alm_tau100_4096_llama3": (L3, f"{KD} ALM, τ = 100 + 0.5 CE", "ALM (τ = 100)", "gold_4096_llama3"),
    "alm_words_4096_llama3": (L3, f"{KD} ALM on word chunks + 0.5 CE", "ALM (word chunks)", "gold_4096_llama3"),
    "alm_words_tau100_4096_llama3": (
        L3,
        f"{KD} ALM on word chunks, τ = 100 + 0.5 CE",
        "ALM (word chunks, τ = 100)",
        "gold_4096_llama3",
    ),
    "prefix_kl_4096_llama3": (L3, f"{KD} prefix KL + 0.5 CE", "prefix KL", "gold_4096_llama3"),
    "prefix_kl_cut_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both + 0.5 CE",
        "prefix KL (cuts=both)",
        "gold_4096_llama3",
    ),
    "prefix_kl_obs_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=observed + 0.5 CE",
        "prefix KL (cuts=observed)",
        "gold_4096_llama3",
    ),
    "prefix_kl_within_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=within + 0.5 CE",
        "prefix KL (cuts=within)",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_gold_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both + 0.5 × GOLD one-to-one + 0.5 CE",
        "prefix KL (cuts=both) + GOLD (one-to-one)",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_gold1_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both + 1 × GOLD one-to-one + 0.5 CE",
        "prefix KL (cuts=both) + 1 × GOLD (one-to-one)",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_goldall_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both + 0.5 × GOLD + 0.5 CE",
        "prefix KL (cuts=both) + GOLD (all spans)",
        "gold_4096_llama3",
    ),
    "prefix_kl05_cut_4096_llama3": (
        L3,
        f"{KD} 0.5 × prefix KL, cuts=both + 0.5 CE",
        "0.5 × prefix KL (cuts=both)",
        "gold_4096_llama3",
    ),
    "prefix_kl2_cut_4096_llama3": (
        L3,
        f"{KD} 2 × prefix KL, cuts=both + 0.5 CE",
        "2 × prefix KL (cuts=both)",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_t2_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both, T = 2 + 0.5 CE",
        "prefix KL (cuts=both, T = 2)",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_split_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both, within = 1 + 0.5 CE",
        "prefix KL (cuts=both) + the KL inside the class",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_split_both_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both, within = 1, both models' next rows + 0.5 CE",
        "prefix KL (cuts=both) + the KL inside the class, split by both models' next rows",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_split2_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both, within = 2 + 0.5 CE",
        "prefix KL (cuts=both) + 2 × the KL inside the class",
        "gold_4096_llama3",
    ),
    "prefix_kl_split_4096_sp": (
        SP,
        f"{KD} prefix KL, within = 1 + 0.5 CE",
        "prefix KL + the KL inside the class",
        "gold_4096_sp",
    ),
    "prefix_kl_split_both_4096_sp": (
        SP,
        f"{KD} prefix KL, within = 1, both models' next rows + 0.5 CE",
        "prefix KL + the KL inside the class, split by both models' next rows",
        "gold_4096_sp",
    ),
    "dual_space_4096_llama3": (L3, f"{KD} dual-space KD (DSKD) + 0.5 CE", "dual-space KD", "gold_4096_llama3"),
    "dual_space_t_4096_llama3": (
        L3,
        f"{KD} dual-space KD, the teacher's vocabulary only + 0.5 CE",
        "dual-space KD (teacher space)",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_split_ds_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both, within = 1 + dual-space KD + 0.5 CE",
        "prefix KL (cuts=both) + the KL inside the class + dual-space KD",
        "gold_4096_llama3",
    ),
    "prefix_kl_cut_split_dst_4096_llama3": (
        L3,
        f"{KD} prefix KL, cuts=both, within = 1 + dual-space KD (teacher's vocabulary) + 0.5 CE",
        "prefix KL (cuts=both) + the KL inside the class + dual-space KD (teacher space)",
        "gold_4096_llama3",
    ),
    "prefix_kl_obs14_split_4096_llama3": (
        L3,
        f"{KD} 1.4 × prefix KL, cuts=observed, within = 1 + 0.5 CE",
        "1.4 × prefix KL (cuts=observed) + the KL inside the class",
        "gold_4096_llama3",
    ),
    "prefix_kl_win14_split_4096_llama3": (
        L3,
        f"{KD} 1.4 × prefix KL, cuts=within, within = 1 + 0.5 CE",
        "1.4 × prefix KL (cuts=within) + the KL inside the class",
        "gold_4096_llama3",
    ),
    "prefix_kl_win14_split_unc05_4096_llama3": (
        L3,
        f"{KD} 1.4 × prefix KL, cuts=within, within = 1 + 0.5 CE, + 0.5 CE on the rows no span starts at",
        "1.4 × prefix KL (cuts=within) + the KL inside the class + CE where no span starts",
        "gold_4096_llama3",
    ),
    "prefix_kl_win14_split_ce056_4096_llama3": (
        L3,
        f"{KD} 1.4 × prefix KL, cuts=within, within = 1 + 0.56 CE",
        "1.4 × prefix KL (cuts=within) + the KL inside the class, CE 0.56",
        "gold_4096_llama3",
    ),
    "gold_8192": ("8,192", f"{KD} GOLD + 0.5 CE", "GOLD", None),
    "gold_1024": ("1,024", f"{KD} GOLD + 0.5 CE", "GOLD", None),
    "projected_kl_1024": ("1,024", f"{KD} projected KL + 0.5 CE", "projected KL", "gold_1024"),
}
RUNS = list(SPECS)
CROSS = [n for n in RUNS if not n.startswith("same_")]
VOCAB = {n: spec[0] for n, spec in SPECS.items()}
LABELS = {n: spec[1] for n, spec in SPECS.items()}
TERM = {n: spec[2] for n, spec in SPECS.items()}
CONTROL = {n: spec[3] for n, spec in SPECS.items() if spec[3]}


def collect(runs_dir: Path) -> None:
    """Copy each run's metrics beside this script, refusing (before copying any) runs of the other precision:
    the two sets are two machines' runs and must not mix (bf16 runs go to the --bf16 set only)."""
    found = [name for name in RUNS if (runs_dir / name / "metrics.json").exists()]
    for name in found:
        info = runs_dir / name / "run_info.json"
        precision = json.loads(info.read_text())["config"]["trainer"]["precision"] if info.exists() else None
        if (precision == "bf16-mixed") != BF16:
            sys.exit(
                f"summarize.py: {runs_dir / name} ran in {precision}; "
                + (
                    "pass --bf16 for bf16 runs"
                    if precision == "bf16-mixed"
                    else "the --bf16 set takes bf16-mixed runs only"
                )
            )
    for name in found:
        (HERE / f"{PREFIX}{name}.json").write_text((runs_dir / name / "metrics.json").read_text())


def load() -> dict[str, dict]:
    found = {n: HERE / f"{PREFIX}{n}.json" for n in RUNS}
    return {n: json.loads(p.read_text()) for n, p in found.items() if p.exists()}


def row(label: str, vocab: str, m: dict, who: str) -> str:
    """One model's cells; ``who``: its prefix in the run's metrics (teacher, student, baseline)."""
    agree = m.get(f"{who}.top1_agreement")
    cells = [
        label,
        vocab,
        f"{m[f'{who}.params'] / 1e6:.2f}M",
        f"**{m[f'{who}.bits_per_byte']:.4f}**",
        f"{m[f'{who}.val_ppl']:.2f}",
        f"{agree:.3f}" if agree is not None else "—",
    ]
    return "| " + " | ".join(cells) + " |"


def bpb(runs: dict, name: str, who: str = "student") -> float | None:
    return runs.get(name, {}).get(f"{who}.bits_per_byte")


def goal_lines(runs: dict) -> list[str]:
    """The issue's ratio, (control − cross KD) / (control − same-tokenizer KD) on bits per byte, and
    KD's gain across tokenizers against its gain with one tokenizer (which stays defined when the
    control with the student's own tokenizer already beats the same-tokenizer KD student)."""
    lines, same = [], bpb(runs, "same_tokenizer_kd")
    same_gain = None
    if same is not None and bpb(runs, "same_tokenizer_control") is not None:
        same_gain = bpb(runs, "same_tokenizer_control") - same
        lines.append(f"- KD's gain with the teacher's tokenizer: {same_gain:+.4f} bits/byte over its control")
    for name in CROSS:
        c, s = bpb(runs, CONTROL.get(name, name), "baseline"), bpb(runs, name)
        if c is None or s is None:
            continue
        at = f"{TERM[name]} at {VOCAB[name]}"
        lines.append(f"- {at}: KD's gain over its own control {c - s:+.4f} bits/byte"
                     + (f" ({(c - s) / same_gain:.2f}× the same-tokenizer gain)" if same_gain else ""))  # fmt: skip
        if same is None:
            continue
        if c > same:
            lines.append(f"  - closes **{(c - s) / (c - same):.2f}** of the gap from its control ({c:.4f}) to the "
                         f"same-tokenizer KD student ({same:.4f}) (goal ≥ 0.5)")  # fmt: skip
        else:
            lines.append(f"  - the issue's ratio is undefined: its control ({c:.4f}) is already better than the "
                         f"same-tokenizer KD student ({same:.4f}), so there is no gap to close; the {TERM[name]} student "
                         f"({s:.4f}) beats both")  # fmt: skip
    return lines


def block(runs: dict[str, dict]) -> str:
    head = "| model | vocabulary | params | bits/byte | val ppl (own tokens) | top-1 agreement |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    with_teacher = next((runs[n] for n in RUNS if "teacher.bits_per_byte" in runs.get(n, {})), None)
    if with_teacher:
        lines.append(row("teacher (8 layers, from scratch)", "4,096", with_teacher, "teacher"))
    for name in RUNS:
        if name not in runs:
            continue
        if name in CROSS and name not in CONTROL:  # this run trained the control with its tokenizer
            lines.append(row("control: CE only, its own tokenizer", VOCAB[name], runs[name], "baseline"))
        lines.append(row(LABELS[name], VOCAB[name], runs[name], "student"))
    lines += ["", *goal_lines(runs)]
    if with_teacher:
        lines += ["", f"{with_teacher['train.steps']} steps of 8 rows of the teacher's 256 tokens (the same text for "
                  "every model); bits per byte on the validation rows' text; top-1 agreement with the teacher on "
                  "aligned one-token spans of one string (same positions for the same tokenizer)."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return readme_block.summarize(argv, README, BEGIN, END, lambda: block(load()), collect)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
