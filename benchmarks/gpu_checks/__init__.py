"""The checks of ``benchmarks/gpu_suite.py``, in the order the suite runs them: name -> function of the
``Context`` returning a flat dict of numbers (or raising ``Skip``)."""

from __future__ import annotations

from .kd import fsdp2_sharded_teacher, kd_step, peak_vs_plan
from .loss import fused_vs_naive
from .quant import qat_int4, qlora_vs_lora, teacher_4bit
from .sparse import sparse_2_4

CHECKS = {
    "kd_step": kd_step,
    "peak_vs_plan": peak_vs_plan,
    "fused_vs_naive": fused_vs_naive,
    "qlora_vs_lora": qlora_vs_lora,
    "teacher_4bit": teacher_4bit,
    "qat_int4": qat_int4,
    "fsdp2_sharded_teacher": fsdp2_sharded_teacher,
    "sparse_2_4": sparse_2_4,
}
