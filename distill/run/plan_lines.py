"""The plan (``plan=true``) as console lines, in the run plan's style (``distill.console``): a header, then
labels and texts in aligned columns; memory per device part by part, then the peak against the device."""

from __future__ import annotations

from distill.console import aligned, format_bytes, format_count, format_duration

# the memory model's parts as printed, with what each holds
PART_NOTES = {
    "student weights": "",
    "teacher weights": "frozen",
    "gradients": "",
    "optimizer": "",
    "optimizer step": "temporary",
    "activations": "saved for backward",
    "loss buffers": "logits, their gradient, chunks",
    "fsdp gathered": "unsharded units",
}


def _teacher_text(t: dict) -> str:
    if t["kind"] == "none":
        return "none: the data is the teacher (CE only)"
    parts = [t["kind"], str(t["source"] or "—")]
    if t["params"]:
        parts.append(f"{format_count(t['params'])} params")
    if t["kind"] == "live" and t.get("load_in"):
        parts.append(f"loaded in {t['load_in']}")
    if t["kind"] == "cache":
        parts.append("not loaded while training")
    return " · ".join(parts)


def _setup_text(s: dict) -> str:
    strategy = s["strategy"] + (", teacher sharded" if s["strategy"] == "fsdp" and s["shard_teacher"] else "")
    quant = [] if s["quant"] == "none" else [f"quant={s['quant']}"]
    return " · ".join(
        [
            f"{s['world_size']} × {s['device']} · {strategy}",
            s["precision"],
            *quant,
            f"micro-batch {s['batch_size']} × {s['seq_len']:,} tokens",
        ]
    )


def _flops_text(f: dict) -> str:
    parts = [f"{f['total'] / 1e9:,.1f} GFLOP per token", f"student {f['student'] / 1e9:,.1f}"]
    if f["teacher"]:
        parts.append(f"teacher {f['teacher'] / 1e9:,.1f}")
    return " · ".join(parts)


def plan_lines(plan: dict) -> list[str]:
    """The plan of ``distill.run.plan.make_plan`` as lines for the log."""
    s, memory = plan["student"], plan["memory"]
    student = f"{s['builder']} · {format_count(s['params'])} params"
    if s["trainable"] != s["params"]:
        student += f" ({format_count(s['trainable'])} trainable)"
    rows = [("teacher", _teacher_text(plan["teacher"])), ("student", student), ("devices", _setup_text(plan["setup"]))]
    lines = ["plan (no weights loaded; from config.json shapes)", *aligned(rows)]
    lines.append("  memory per device")
    parts = [(k, v) for k, v in memory.items() if k != "total" and v]
    device = plan["device_memory_bytes"]
    verdict = "fits" if plan["fits"] else "does NOT fit"
    largest = plan["largest_micro_batch"]
    biggest = f"largest micro-batch that fits: {largest}" if largest else "not even micro-batch 1 fits"
    memory_rows = [
        (k, f"{format_bytes(v):>10}" + (f"  {PART_NOTES[k]}" if PART_NOTES.get(k) else "")) for k, v in parts
    ]
    memory_rows.append(
        ("peak", f"{format_bytes(memory['total']):>10}  of {format_bytes(device)}: {verdict} · {biggest}")
    )
    lines += aligned(memory_rows, indent="    ")
    hours = plan["seconds"] / 3600
    devices = plan["setup"]["world_size"]
    lines += aligned(
        [
            ("compute", _flops_text(plan["flops_per_token"])),
            (
                "time",
                f"{plan['tokens']:,} tokens ({plan['tokens_from']}) at {plan['mfu']:.0%} of "
                f"{plan['peak_tflops']:g} TFLOP/s × {devices}: ≈ {format_duration(plan['seconds'])}"
                f" · {hours * devices:,.1f} device-hours",
            ),
        ]
    )
    return lines
