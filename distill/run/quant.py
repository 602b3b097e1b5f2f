"""The quantization step of a run: the ``quant=`` plugin for the student, the memory estimate and
fit check before launch, and ``teacher.load_in`` (the live teacher stored in fewer bits)."""

from __future__ import annotations

from omegaconf import DictConfig

from distill.eval.metrics import evaluate
from distill.quant.config import log_memory_estimate, quant_plugin, quantize_teacher_for_run
from distill.run.memory import memory_setup
from distill.run.setup import autocast_dtype, device_of
from distill.run.teachers import add_teachers
from distill.run.teachers_config import member_config
from distill.safety import check_memory_fits
from distill.teacher.source import TeacherSource


def prepare_quantization(cfg: DictConfig, student, teacher: TeacherSource, dm, vocab_size: int, loss=None):
    """Returns (plugin or None, memory estimate, the quantized teacher's metrics). The estimate is the one
    memory model ``plan=true`` prints (``distill.run.memory.memory_setup``), for this device."""
    precision, load_in = cfg.trainer.get("precision"), cfg.teacher.get("load_in")
    plugin = quant_plugin(cfg.get("quant"), precision, device_of(cfg))
    if plugin is not None:
        plugin.check_steps(cfg.trainer.get("max_steps"))
    setup = memory_setup(cfg, vocab_size, batch_size=dm.batch_size, seq_len=dm.seq_len, plugin=plugin, loss=loss)
    # several teachers: the first counted as the one teacher, the other live ones added
    estimate = add_teachers(log_memory_estimate(student, teacher.live_model, setup, load_in), cfg, teacher, setup)
    check_memory_fits(estimate["total"], device_of(cfg), cfg.memory.get("available_bytes"), cfg.memory.force)
    quantized = quantize_live_teacher(cfg, teacher.live_model, dm, vocab_size)
    for i, member in enumerate(teacher.members[1:], 1):  # each teacher at its own teachers[i].load_in
        done = quantize_live_teacher(member_config(cfg, i), member.live_model, dm, vocab_size)
        quantized |= {f"teachers.{i}.{k.split('.', 1)[1]}": v for k, v in done.items()}
    return plugin, estimate, quantized


def quantize_live_teacher(cfg: DictConfig, model, dm, vocab_size: int) -> dict:
    """``teacher.load_in``: the live teacher stored in less memory, scored on validation before."""
    device = device_of(cfg)

    def val_ppl(m) -> float:
        return evaluate(
            {"teacher": m.to(device)},
            dm.val_dataloader(),
            vocab_size,
            device=device,
            autocast_dtype=autocast_dtype(cfg.trainer.precision),
        )["teacher"]["val_ppl"]

    return quantize_teacher_for_run(model, cfg.teacher.get("load_in"), device, val_ppl)
