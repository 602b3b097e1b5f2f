"""What a run prints: known harmless library noise kept off the console, the plan before the work, and
the results at the end.

``quiet_known_noise()`` runs first thing in every CLI, before torch, torchao, bitsandbytes or Lightning
are imported (some of their lines are printed at import). Each silenced line is named by the logger
that emits it (or the warning's category and module) and its exact message, with a reason: a new or
different line from the same library still shows. ``DISTILL_SHOW_NOISE=1`` turns the silencing off.

This module imports only the standard library, so calling it costs nothing before the heavy imports.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


def _torch_without_cuda(record: logging.LogRecord) -> bool:
    """Lines about CUDA-only kernels are noise on a machine without CUDA, and news on one with it."""
    torch = sys.modules.get("torch")  # the emitting library imported it already
    return torch is not None and not torch.cuda.is_available()


def _enum_from_torchao(record: logging.LogRecord) -> bool:
    """torchao registers its own config enums; an enum registered by anyone else (us) keeps the notice."""
    cls = record.args[0] if isinstance(record.args, tuple) and record.args else None
    return getattr(cls, "__module__", "").startswith("torchao.")


@dataclass(frozen=True)
class Noise:
    """A known harmless log line: its logger, a regex its whole message matches, why it is harmless,
    and, where the same line can matter elsewhere, a condition on the record."""

    logger: str
    message: str
    why: str
    when: Callable[[logging.LogRecord], bool] | None = None

    def matches(self, record: logging.LogRecord) -> bool:
        return re.fullmatch(self.message, record.getMessage(), re.DOTALL) is not None and (
            self.when is None or self.when(record)
        )


# Lightning's rank_zero_info goes through whichever of these loggers its last imported package set.
_RANK_ZERO = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)

KNOWN_NOISE: tuple[Noise, ...] = (
    Noise(
        "torchao",
        r"Failed to load \S*/torchao/_C\w*\.[\w.-]*so: Could not load this library: .*",
        "torchao's CUDA-only kernels (mxfp8, cutlass) cannot load into a torch without CUDA; unused here",
        _torch_without_cuda,
    ),
    Noise(
        "torchao.kernel.intmm",
        r"Warning: Detected no triton, on systems without Triton certain kernels will not work",
        "Triton kernels run only on GPUs",
        _torch_without_cuda,
    ),
    Noise(
        "torch.utils._pytree",
        r"<enum '\w+'> is an Enum subclass and is now natively supported by torch\.compile .*",
        "torchao's own enums, registered at its import: a deprecation for torchao to fix",
        _enum_from_torchao,
    ),
    Noise(
        "bitsandbytes.backends.cpu.ops",
        r"Failed to load CPU gemm_4bit_forward from kernels-community: .*Hugging Face Hub is in offline mode.*",
        "offline, bitsandbytes cannot fetch its optional hub kernel and uses its built-in CPU kernel",
    ),
    Noise(
        "kernels._internals.hf_hub",
        r"Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because "
        r"Hugging Face Hub is in offline mode\.",
        "the same bitsandbytes lookup, on its way to failing offline",
    ),
    *(
        Noise(
            name,
            r"GPU available: False, used: False|GPU available: True \(\w+\), used: True",
            "hardware as configured; a GPU present but unused still shows",
        )
        for name in _RANK_ZERO
    ),
    *(Noise(name, r"TPU available: False, using: 0 TPU cores", "no TPU, none asked for") for name in _RANK_ZERO),
    *(
        Noise(
            name,
            r"💡 Tip: For seamless cloud logging and experiment tracking, try installing \[litlogger\].*",
            "an advertisement, printed by every Trainer",
        )
        for name in _RANK_ZERO
    ),
)


@dataclass(frozen=True)
class NoisyWarning:
    """A known harmless ``warnings.warn``: its category, message (regex, from the start) and the module
    it is attributed to, so the same warning raised from anywhere else still shows."""

    category: type[Warning]
    message: str
    module: str
    why: str


KNOWN_WARNINGS: tuple[NoisyWarning, ...] = (
    NoisyWarning(
        FutureWarning,
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree\Z",
        "Lightning's own pytree helper on torch's deprecated LeafSpec: for Lightning to fix",
    ),
)


class DropKnownNoise(logging.Filter):
    """On one logger: drop the records that match one of its known-noise rules, pass every other."""

    def __init__(self, rules: list[Noise]):
        super().__init__()
        self.rules = rules

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(rule.matches(record) for rule in self.rules)


def quiet_known_noise() -> None:
    """Silence ``KNOWN_NOISE`` and ``KNOWN_WARNINGS`` for this process; idempotent.

    Logger filters (not handler filters) so they hold whatever handlers Hydra or Lightning add later:
    a filter on the emitting logger sees exactly that logger's records, before any handler."""
    if os.environ.get("DISTILL_SHOW_NOISE", "").lower() in ("1", "true", "yes"):
        return
    by_logger: dict[str, list[Noise]] = {}
    for rule in KNOWN_NOISE:
        by_logger.setdefault(rule.logger, []).append(rule)
    for name, rules in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
            logger.addFilter(DropKnownNoise(rules))
    for w in KNOWN_WARNINGS:
        if not any(
            f[0] == "ignore" and f[1] is not None and f[1].pattern == w.message and f[2] is w.category
            for f in warnings.filters
        ):
            warnings.filterwarnings("ignore", message=w.message, category=w.category, module=w.module)


# --- the plan, before the work ----------------------------------------------------------------------


def format_count(n: float) -> str:
    """Parameters at a glance: 139584 -> 0.14M, 8.03e9 -> 8.03B."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def aligned(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    """``label  text`` lines with the texts in one column."""
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{indent}{label:<{width}}  {text}".rstrip() for label, text in rows]


def objective_text(weights: Mapping[str, float], temperature: float | None) -> str:
    """``0.5 × forward_kl + 0.5 × ce · temperature 2``: the active terms (weight ≠ 0) as the loss is summed."""
    terms = " + ".join(f"{w:g} × {name}" for name, w in weights.items() if w)
    return terms + (f" · temperature {temperature:g}" if temperature is not None else "")


def run_plan_lines(
    *,
    teacher_kind: str,
    teacher_source: str | None,
    teacher_params: int | None,
    student_builder: str,
    student_params: int | None,
    data_name: str,
    train_tokens: int | None,
    objective: Mapping[str, float],
    temperature: float | None = None,
    steps: int | None = None,
    tokens_per_step: int | None = None,
    memory_bytes: float | None = None,
    time_s: float | None = None,
) -> list[str]:
    """What the run is about to do, as a header and aligned lines, from plain values (None: not known).

    ``teacher_kind``: live | cache | none; ``teacher_source``: its path (a model dir or the cache dir),
    None for one trained from scratch; ``objective``: term -> weight (``Objective.weights``)."""
    if teacher_kind == "none":
        teacher = "none: the data is the teacher (CE only)"
    else:
        teacher = " · ".join(
            [
                teacher_kind,
                teacher_source or "from scratch",
                *([f"{format_count(teacher_params)} params"] if teacher_params else []),
            ]
        )
    student = " · ".join([student_builder, *([f"{format_count(student_params)} params"] if student_params else [])])
    data = [data_name]
    if train_tokens is not None:
        data.append(f"{train_tokens:,} training tokens")
    if steps is not None:
        data.append(f"{steps:,} steps" + (f" × {tokens_per_step:,} tokens" if tokens_per_step else ""))
    rows = [
        ("teacher", teacher),
        ("student", student),
        ("data", " · ".join(data)),
        ("objective", objective_text(objective, temperature)),
    ]
    estimate = [
        *([f"{format_bytes(memory_bytes)} training memory"] if memory_bytes is not None else []),
        *([f"{format_duration(time_s)}"] if time_s is not None else []),
    ]
    if estimate:
        rows.append(("estimate", "≈ " + " · ≈ ".join(estimate)))
    return ["run plan", *aligned(rows)]


# --- the results, at the end ------------------------------------------------------------------------


def text_table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell: the first left-aligned (names), the rest right (numbers)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), *(line(r) for r in rows)]


# report.md's columns (``distill.eval.report.MODEL_COLUMNS``), shorter to fit a terminal, and scoring speed
CONSOLE_COLUMNS = ["model", "params", "val ppl", "bits/byte", "top-1 agreement", "KL(teacher‖model)", "scoring tok/s"]


def compression_text(metrics: dict) -> str | None:
    """The compression summary in one line (teacher / student; > 1 is better), from ``compression.*``."""
    parts = [
        f"{metrics[key]:.2f}× {what}"
        for key, what in (
            ("compression.params_x", "fewer parameters"),
            ("compression.size_x", "smaller on disk"),
            ("compression.speed_x", "faster scoring"),
        )
        if key in metrics
    ]
    if "compression.ppl_delta" in metrics:
        parts.append(f"val ppl {metrics['compression.ppl_delta']:+.3f} vs the teacher")
    return "compression: " + ", ".join(parts) if parts else None


def results_table_lines(metrics: dict, out_dir: str | Path) -> list[str]:
    """The end of a run: the results table (teacher / student / control), the summary, and where the
    outputs are. ``metrics`` is what metrics.json holds."""
    # imported here: report.py loads matplotlib, which a CLI should not pay for before its work starts
    from distill.eval.report import model_rows, summary_lines

    rows = [
        [*cells, f"{metrics[f'{key}.scoring_tokens_per_s']:,.0f}" if f"{key}.scoring_tokens_per_s" in metrics else "—"]
        for key, cells in model_rows(metrics)
    ]
    lines = ["results", *text_table(CONSOLE_COLUMNS, rows)]
    lines += ["  " + s for s in summary_lines(metrics)]
    compression = compression_text(metrics)
    if compression:
        lines.append("  - " + compression)
    out = Path(out_dir)
    lines.append("outputs")
    lines += aligned(
        [
            ("metrics", str(out / "metrics.json")),
            ("report", str(out / "report.md")),
            ("student", f"{out / 'student'}/  (AutoModelForCausalLM.from_pretrained)"),
        ]
    )
    return lines
