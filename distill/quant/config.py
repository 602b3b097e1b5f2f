"""The quantization side of a run: the ``quant=`` plugin, ``teacher.load_in``, the memory estimate
printed before launch, and the report's section. The plugins themselves live beside it in ``distill.quant``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from hydra.utils import instantiate

from distill.errors import DistillError

log = logging.getLogger(__name__)


def check_load_in(load_in) -> None:
    """``teacher.load_in`` checked with the other settings, before any data or model work."""
    from distill.quant.quantized_teacher import LOAD_IN

    if load_in is not None and str(load_in).lower() not in LOAD_IN:
        raise DistillError(f"teacher.load_in must be one of {', '.join(LOAD_IN)}, got {load_in!r}")


def quant_plugin(spec, precision, device: str):
    """The ``quant=`` preset as a Lightning precision plugin wrapping ``trainer.precision``; None for none."""
    if not spec or "_target_" not in spec:
        return None
    return instantiate(spec, precision=str(precision or "32-true"), device=device)


def log_memory_estimate(student, teacher_model, setup, load_in) -> dict:
    """The memory model's parts for this run (``distill.quant.memory``), logged at debug level."""
    from distill.quant.memory import estimate_memory, format_estimate

    check_load_in(load_in)
    estimate = estimate_memory(student, teacher_model, setup)
    log.debug("%s", format_estimate(estimate))  # the run plan shows the total; the breakdown on request
    return estimate


def quantize_teacher_for_run(model, load_in, device: str, val_ppl: Callable) -> dict:
    """``teacher.load_in=bf16|8bit|4bit``: store the live teacher in less memory; returns the memory
    saved and its validation perplexity before (``val_ppl(model)``), for metrics and the report."""
    if load_in in (None, "fp32"):
        return {}
    if model is None:
        log.warning("teacher.load_in=%s has no effect: this run has no live teacher", load_in)
        return {}
    from distill.quant.quantized_teacher import model_memory_bytes, quantize_teacher

    before = val_ppl(model)
    memory_before = model_memory_bytes(model)
    quantize_teacher(model, load_in, device)
    memory = model_memory_bytes(model)
    return {
        "teacher.load_in": str(load_in),
        "teacher.memory_bytes_unquantized": memory_before,
        "teacher.memory_bytes": memory,
        "teacher.memory_saved_bytes": memory_before - memory,
        "teacher.val_ppl_unquantized": before,
    }


def quant_section(metrics: dict) -> list[str]:
    lines = []
    if "quant" in metrics:
        q = metrics["quant"]
        lines += [
            f"- student quantization: `{q['quant']}`"
            + (f", {q.get('quantized_layers', q.get('layers_quantized'))} layers quantized" if q else "")
        ]
        skipped = q.get("skipped") or q.get("layers_skipped")
        if skipped:
            lines.append(
                f"- layers left in full precision (listed, not silently skipped): {', '.join(map(str, skipped))}"
            )
        for key, label in (("quant.packed_bytes", "packed low-bit checkpoint"), ("quant.hf_bytes", "HF export")):
            if key in metrics:
                lines.append(f"- {label}: {metrics[key] / 1e6:.2f} MB on disk")
    if "teacher.memory_bytes" in metrics:
        lines.append(
            f"- teacher loaded in `{metrics['teacher.load_in']}`: {metrics['teacher.memory_bytes'] / 1e6:.2f} MB "
            f"(was {metrics['teacher.memory_bytes_unquantized'] / 1e6:.2f} MB, "
            f"{metrics['teacher.memory_saved_bytes'] / 1e6:.2f} MB saved); teacher val ppl "
            f"{metrics['teacher.val_ppl_unquantized']:.3f} -> {metrics['teacher.val_ppl']:.3f}"
        )
    measured = ""
    if "train.peak_cuda_bytes" in metrics:
        measured = f", measured peak {metrics['train.peak_cuda_bytes'] / 2**20:.1f} MiB (CUDA allocated)"
    elif "train.rss_growth_bytes" in metrics:
        measured = (
            f", measured: the process's resident memory grew by {metrics['train.rss_growth_bytes'] / 2**20:.1f}"
            f" MiB during training (peak {metrics['train.peak_rss_bytes'] / 2**20:.1f} MiB, libraries included)"
        )
    lines.append(
        f"- training memory: estimated {metrics['memory.estimate_bytes'] / 2**20:.1f} MiB before launch{measured}"
    )
    return ["## Quantization and memory", "", *lines]
