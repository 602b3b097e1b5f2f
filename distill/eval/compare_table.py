"""distill-eval's table (``eval.md``): one row per model, the columns any model has, and notes on
what the tokenizer-free metrics were scored on (``distill.eval.compare`` computes the rows)."""

from __future__ import annotations

# (key, header, format) of the results table, in order
COLUMNS = [
    ("params", "params", lambda v: f"{v / 1e6:.2f}M"),
    ("size_bytes", "size on disk", lambda v: f"{v / 2**20:.1f} MiB"),
    ("val_ppl", "val ppl", lambda v: f"{v:.3f}"),
    ("bits_per_byte", "bits/byte", lambda v: f"{v:.3f}"),
    ("bits_per_char", "bits/char", lambda v: f"{v:.3f}"),
    ("top1_agreement", "top-1 agreement", lambda v: f"{v:.3f}"),
    ("aligned_top1_agreement", "top-1 agreement (aligned)", lambda v: f"{v:.3f}"),
    ("kl_to_teacher", "KL(teacher‖model)", lambda v: f"{v:.4f}"),
    ("scoring_tokens_per_s", "scoring tokens/s", lambda v: f"{v:,.0f}"),
    ("gen_tokens_per_s", "generation tokens/s", lambda v: f"{v:,.1f}"),
    ("ms_per_token", "ms/token", lambda v: f"{v:.2f}"),
    ("ttft_ms", "time to first token (ms)", lambda v: f"{v:.2f}"),
    # data=stdlib_instruct only (distill/eval/answers.py): a column no model has is left out
    ("answer_compile_rate", "answers compile", lambda v: f"{v:.3f}"),
    ("answer_first_line_match", "def line matches", lambda v: f"{v:.3f}"),
]


def to_markdown(result: dict) -> str:
    ref = result["reference"]
    columns = [c for c in COLUMNS if any(c[0] in row for row in result["models"].values())]
    head = ["model", *(h for _, h, _ in columns), "× smaller", "× faster (scoring)"]
    lines = [
        f"# Model comparison (reference teacher: {ref})",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for name, row in result["models"].items():
        cells = [fmt(row[k]) if k in row else "—" for k, _, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['params_x']:.2f} | {row['speed_x']:.2f} |")
    d = result["data"]
    harness = sorted({k for row in result["models"].values() for k in row if k.startswith("lm_eval.")})
    if harness:
        lines += [
            "",
            "## lm-evaluation-harness (local tasks from the validation split)",
            "",
            "| model | " + " | ".join(k.removeprefix("lm_eval.") for k in harness) + " |",
            "|---|" + "---:|" * len(harness),
        ]
        for name, row in result["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4g}" if k in row else "—" for k in harness) + " |")
    lines += [
        "",
        f"Validation: {d['val_tokens']:,} target tokens ({d['val_blocks']} blocks of {d['seq_len']}). "
        f"Speed on {result['device']}, {result['precision']}: scoring over {d['speed_batches']} validation "
        f"batches of {d['speed_batch_size']}; generation greedy, batch 1, {result['settings']['new_tokens']} "
        f"new tokens; medians over the prompts and {result['settings']['rounds']} rounds that interleave the models, "
        f"each after a warm-up.",
        *text_notes(result),
        "",
        "## Samples (greedy)",
        "",
    ]
    for name, items in result["samples"].items():
        lines += [f"### {name}", ""]
        for item in items:
            lines += ["```", item["prompt"] + item["completion"], "```", ""]
    lines += llama_cpp_section(result.get("llama_cpp", {}), result["models"])
    if result.get("lm_eval_commands"):
        lines += ["## lm-evaluation-harness commands", "", "```bash", *result["lm_eval_commands"].values(), "```", ""]
    return "\n".join(lines)


def text_notes(result: dict) -> list[str]:
    """What bits per byte was scored on, and why models with another tokenizer lack per-token metrics."""
    d, rows = result["data"], result["models"]
    if not any("bits_per_byte" in row for row in rows.values()):
        return []
    lines = [f"\nBits per byte and per character: every model on the same {d['text_chars']:,} characters "
             f"({d['text_bytes']:,} UTF-8 bytes) of {d['text_docs']} validation documents, each under its own "
             f"tokenizer, in windows of up to {d['seq_len'] + 1} of its tokens."]  # fmt: skip
    if own := [name for name, row in rows.items() if not row.get("shared_tokenizer", True)]:
        positions = ", ".join(f"{name}: {rows[name].get('aligned_positions', 0):,}" for name in own)
        lines.append(
            f"\n{', '.join(own)}: a tokenizer other than {result['reference']}'s, so val ppl, top-1 agreement and KL "
            "(compared token by token on the reference's tokens) are left out (—). Bits per byte compares every "
            "model on one scale; top-1 agreement (aligned) counts the positions whose reference and model tokens "
            f"are the same string ({positions}); speed ratios there are per byte of text."
        )
    if lossy := [name for name, row in rows.items() if row.get("text_lossless") is False]:
        lines.append(f"\n{', '.join(lossy)}: the tokenizer does not give the text back (it normalizes it).")
    return lines


def llama_cpp_section(rows: dict, models: dict) -> list[str]:
    """The section of eval.md: one line per file, with the PyTorch model's perplexity beside it."""
    if not rows:
        return []
    lines = [
        "",
        "## llama.cpp (each GGUF file run by llama.cpp on this machine's CPU)",
        "",
        "| file | from model | size on disk | val ppl (llama.cpp) | val ppl (PyTorch model) | generation tokens/s "
        "| time to first token (ms) | threads |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        torch_ppl = models.get(row["model"], {}).get("val_ppl")
        ppl = f"{row['val_ppl']:.3f}" if "val_ppl" in row else "— (not the reference's tokenizer)"
        lines.append(
            f"| {name} | {row['model'] or '—'} | {row['size_bytes'] / 2**20:.2f} MiB | {ppl} | "
            f"{f'{torch_ppl:.3f}' if torch_ppl and 'val_ppl' in row else '—'} | {row['gen_tokens_per_s']:,.1f} | "
            f"{row['ttft_ms']:.2f} | {row['threads']} |"
        )
    return [*lines, ""]
