"""The console: known library noise silenced narrowly (a subprocess that imports and trains as a CLI does),
the run plan and the results table from plain values."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distill.console import format_duration, results_table_lines, run_plan_lines
from distill.eval.report import write_markdown

REPO = Path(__file__).resolve().parents[1]
HAS_KERNELS = importlib.util.find_spec("kernels") is not None

# What a CLI does, in order: quiet first, then the heavy imports and a Trainer; then, from the same
# libraries, lines that are not known noise (they must still show).
SCRIPT = textwrap.dedent("""
    import enum, logging
    from distill.console import quiet_known_noise
    quiet_known_noise()
    logging.basicConfig(level=logging.INFO, format="%(name)s|%(message)s")  # as Hydra does: one root handler

    import torch
    import torchao.quantization  # CUDA-only libraries, triton, torchao's enums registered as pytree constants
    import lightning as L
    from torch.utils.data import DataLoader
    from distill.distillation import DistillationModule
    from distill.losses.objective import ce_only
    from distill.student.scratch import build_llama

    print("CUDA", torch.cuda.is_available())
    model = build_llama(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, eos_token_id=0)
    data = torch.randint(0, 50, (4, 9))
    loader = DataLoader([(r[:-1], r[1:]) for r in data], batch_size=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DistillationModule(model, ce_only(), 50, max_steps=1), loader)  # GPU/TPU lines, tip, LeafSpec

    logging.getLogger("torchao").warning("Failed to load /elsewhere/other.so: unrelated")
    class Mode(str, enum.Enum):
        A = "a"
    torch.utils._pytree.register_constant(Mode)  # the enum notice, for an enum that is not torchao's
    torch.utils._pytree.LeafSpec()  # the LeafSpec deprecation, raised outside Lightning
    from lightning.pytorch.utilities import rank_zero_info
    rank_zero_info("GPU available: True (cuda), used: False")
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    message = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
               "`pip install kernels` and the kernels >= 0.11.1")  # bitsandbytes' own call, on AVX512-BF16 CPUs
    if HAS_KERNELS:
        from kernels import get_kernel
        try:
            get_kernel("kernels-community/quantization-bitsandbytes", version=1)  # as bitsandbytes asks, offline
        except Exception as exc:
            bnb.warning(message, exc)
    bnb.warning(message, ModuleNotFoundError("No module named 'kernels'"))  # actionable: stays
""")

NOISE = [
    "_C_mxfp8",
    "_C_cutlass",
    "Detected no triton",
    "<enum 'KernelPreference'>",
    "GPU available: False",
    "TPU available: False",
    "litlogger",
    "lightning/pytorch/utilities/_pytree.py",
]
OFFLINE_NOISE = [
    "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
    "is not available in the local cache and Hugging Face Hub is in offline mode",
]
KEPT = [
    "Failed to load /elsewhere/other.so: unrelated",
    "<enum 'Mode'> is an Enum subclass",
    "<string>:",
    "`isinstance(treespec, LeafSpec)` is deprecated",
    "GPU available: True (cuda), used: False",
    "`Trainer.fit` stopped: `max_steps=1` reached",
    "have no `val_dataloader`. Skipping val loop",
    "from kernels-community: No module named 'kernels'",
]


def _run(show_noise: bool) -> tuple[str, bool]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILL_SHOW_NOISE": "1" if show_noise else ""}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", f"HAS_KERNELS = {HAS_KERNELS}\n" + SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr, "CUDA False" in proc.stdout


def _expected_noise(cpu_only: bool) -> list[str]:
    # the CUDA-only kernels' lines are news on a machine with CUDA: silenced only without it
    cuda_lines = ["_C_mxfp8", "_C_cutlass", "Detected no triton"]
    return [n for n in NOISE if cpu_only or n not in cuda_lines] + (OFFLINE_NOISE if HAS_KERNELS else [])


@pytest.mark.slow
def test_the_script_prints_the_noise_when_asked():
    """DISTILL_SHOW_NOISE=1: the script really prints every known line (checks the libraries still do)."""
    out, cpu_only = _run(show_noise=True)
    missing = [n for n in _expected_noise(cpu_only) if n not in out]
    assert not missing, out


def test_known_noise_is_silenced_and_other_lines_stay():
    out, cpu_only = _run(show_noise=False)
    assert [n for n in _expected_noise(cpu_only) if n in out] == [], out
    assert [k for k in KEPT if k not in out] == [], out


METRICS = {
    "teacher.params": 8_000_000,
    "teacher.val_ppl": 10.0,
    "teacher.scoring_tokens_per_s": 1000.0,
    "student.params": 4_000_000,
    "student.val_ppl": 11.0,
    "student.top1_agreement": 0.8,
    "student.kl_to_teacher": 0.125,
    "student.scoring_tokens_per_s": 2500.0,
    "baseline.params": 4_000_000,
    "baseline.val_ppl": 14.0,
    "baseline.top1_agreement": 0.5,
    "baseline.kl_to_teacher": 0.5,
    "train.tokens": 5120,
    "train.wall_s": 2.0,
    "train.tokens_per_s": 2560.0,
    "compression.params_x": 2.0,
    "compression.speed_x": 2.5,
    "compression.ppl_delta": 1.0,
}


def test_results_table_has_the_report_cells_aligned_and_the_outputs(tmp_path):
    lines = results_table_lines(METRICS, tmp_path)
    write_markdown(METRICS, tmp_path / "report.md")
    markdown = (tmp_path / "report.md").read_text()
    header, teacher, student, control = lines[1:5]
    assert student.split() == ["student", "(distilled)", "4.00M", "11.000", "—", "0.800", "0.1250", "2,500"]
    assert "| student (distilled) | 4.00M | 11.000 | — | 0.800 | 0.1250 |" in markdown  # the same cells
    assert teacher.split()[1:] == ["8.00M", "10.000", "—", "—", "—", "1,000"]
    assert control.split()[-1] == "—"  # no scoring speed measured for the control
    # numbers right-aligned under their headers: every row ends where the header does
    assert len({len(line) for line in (header, teacher, student, control)}) == 1
    text = "\n".join(lines)
    assert "perplexity gap closed, (control − student) / (control − teacher): 0.750" in text
    assert "5,120 tokens in 2.0 s (2,560 tokens/s)" in text
    assert "2.00× fewer parameters, 2.50× faster scoring, val ppl +1.000 vs the teacher" in text
    assert str(tmp_path / "metrics.json") in text and f"{tmp_path / 'student'}/" in text
    assert str(tmp_path / "report.md") in text


def test_results_table_without_a_control_or_a_teacher():
    metrics = {k: v for k, v in METRICS.items() if not k.startswith(("baseline.", "teacher.", "compression."))}
    lines = results_table_lines(metrics, "/out")
    assert [line.split()[0] for line in lines[1:3]] == ["model", "student"]
    assert not any("gap closed" in line or "compression" in line or "control" in line for line in lines)


def test_run_plan_lines_are_aligned_and_name_what_runs():
    lines = run_plan_lines(
        teacher_kind="live",
        teacher_source=None,
        teacher_params=139_584,
        student_builder="depth (every other layer)",
        student_params=86_208,
        data_name="stdlib",
        train_tokens=257_465,
        objective={"forward_kl": 1.0, "ce": 0.5, "jsd": 0.0},
        temperature=2.0,
        steps=20,
        tokens_per_step=256,
        memory_bytes=4.2 * 2**20,
        time_s=40,
    )
    assert lines == [
        "run plan",
        "  teacher    live · from scratch · 0.14M params",
        "  student    depth (every other layer) · 0.09M params",
        "  data       stdlib · 257,465 training tokens · 20 steps × 256 tokens",
        "  objective  1 × forward_kl + 0.5 × ce · temperature 2",
        "  estimate   ≈ 4.2 MiB training memory · ≈ 40 s",
    ]


def test_run_plan_with_a_cache_no_teacher_and_unknowns():
    cached = run_plan_lines(
        teacher_kind="cache",
        teacher_source="/caches/t",
        teacher_params=8_030_000_000,
        student_builder="scratch",
        student_params=None,
        data_name="files",
        train_tokens=None,
        objective={"forward_kl": 1.0},
        temperature=None,
    )
    assert cached[1:] == [
        "  teacher    cache · /caches/t · 8.03B params",
        "  student    scratch",
        "  data       files",
        "  objective  1 × forward_kl",
    ]  # nothing estimated: no line
    none = run_plan_lines(
        teacher_kind="none",
        teacher_source=None,
        teacher_params=None,
        student_builder="scratch",
        student_params=None,
        data_name="chat",
        train_tokens=None,
        objective={"ce": 1.0},
    )
    assert none[1] == "  teacher    none: the data is the teacher (CE only)"


@pytest.mark.parametrize("seconds, text", [(40, "40 s"), (600, "10 min"), (3 * 3600, "3.0 h")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text
