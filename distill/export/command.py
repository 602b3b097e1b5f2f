"""The body of ``distill-export`` and the GGUF step at the end of ``distill-train``.

``distill-export run_dir=<run dir or student dir> export.gguf=<type>`` reads the student (a run dir's
``student/``, or a model dir), and writes ``student.<type>.gguf`` into the run dir (into the model
dir when given one), as ``distill-train export.gguf=<type>`` does at the end of a run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from distill.errors import DistillError
from distill.export.arch import arch_of
from distill.export.gguf_file import FileTypes, resolve_types, trained_types, write_gguf
from distill.quant.ggml import BLOCK_SIZE

log = logging.getLogger(__name__)


def locate(run_dir: str | Path) -> tuple[Path, Path]:
    """(student dir, where the GGUF goes) for a run dir or a model dir."""
    root = Path(run_dir)
    if (root / "student" / "config.json").is_file():
        return root / "student", root
    if (root / "config.json").is_file():
        return root, root
    if (root / "adapter_config.json").is_file() or (root / "student" / "adapter_config.json").is_file():
        raise DistillError(f"GGUF export: {root} holds unmerged LoRA adapters; merge them into a full model first")
    raise DistillError(f"run_dir {root}: neither a run dir (with student/) nor a model dir (with config.json)")


def load_student(student_dir: Path):
    from transformers import AutoModelForCausalLM

    from distill.safety import weight_kwargs

    if (student_dir / "adapter_config.json").is_file():
        raise DistillError(
            f"GGUF export: {student_dir} holds unmerged LoRA adapters (adapter_config.json); merge them first"
        )
    kwargs = weight_kwargs(student_dir, "run_dir")
    return AutoModelForCausalLM.from_pretrained(str(student_dir), dtype="float32", **kwargs).eval()


def export_dir(run_dir: str | Path, requested: str | None, embeddings: str | None = None, fallback=None) -> dict:
    """Write ``student.<type>.gguf`` for the student in ``run_dir``; returns its metrics."""
    student_dir, out = locate(run_dir)
    model = load_student(student_dir)
    types = resolve_types(requested, embeddings, trained_types(model.config), fallback)
    metrics = write_gguf(model, student_dir, out / f"student.{types.qtype}.gguf", types, name=out.name)
    return {**metrics, "gguf.path": str(out / metrics["gguf.file"])}


def export(cfg: DictConfig) -> dict:
    """``distill-export``: the checks every CLI runs, then the export."""
    from distill.run.setup import setup_run

    setup_run(cfg, "export")
    metrics = export_dir(cfg.run_dir, cfg.export.get("gguf"), cfg.export.get("embeddings"), cfg.export.get("fallback"))
    log.info("%s", json.dumps(metrics))
    return metrics


def run_types(cfg: DictConfig, plugin) -> FileTypes | None:
    """The file a distill-train run exports: ``export.gguf``, and always the type of a ggml QAT/PTQ run."""
    export = cfg.get("export") or {}
    trained = getattr(plugin, "gguf_type", None)
    if export.get("gguf") is None and trained is None:
        return None
    record = {"weights": trained, "embeddings": plugin.embeddings, "fallback": plugin.fallback} if trained else None
    return resolve_types(export.get("gguf"), export.get("embeddings"), record, export.get("fallback"))


def check_run_export(cfg: DictConfig, student, plugin) -> None:
    """Before training: the student can be written as the GGUF this run will export (else one line now)."""
    types = run_types(cfg, plugin)
    if types is None:
        return
    arch_of(student.config)
    # widths from the modules (LoRA, if any, is merged before the export: its own layers are skipped)
    head, embed = student.get_output_embeddings(), student.get_input_embeddings()
    bad = []
    for name, module in student.named_modules():
        width = getattr(module, "in_features", None) or getattr(module, "embedding_dim", None)
        if "lora_" in name or not width:
            continue
        t = types.pick(module is head or module is embed, 2, width)
        if t in BLOCK_SIZE and width % BLOCK_SIZE[t]:
            bad.append(f"{name} (width {width})")
    if bad:
        t = types.qtype
        raise DistillError(
            f"{t} (quant= / export.gguf) quantizes rows in blocks of {BLOCK_SIZE[t]}; input widths not a multiple: "
            f"{', '.join(bad[:4])}{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}; set quant.fallback "
            "(or export.fallback) to a type for those rows, e.g. q4_0 as llama-quantize does"
        )


def export_run(cfg: DictConfig, plugin, out: Path) -> dict:
    """After ``student/`` is written: the run's GGUF, if it has one; its metrics for metrics.json."""
    types = run_types(cfg, plugin)
    if types is None:
        return {}
    metrics = export_dir(out, types.qtype, types.embeddings, types.fallback)
    return {k: v for k, v in metrics.items() if k != "gguf.path"}
