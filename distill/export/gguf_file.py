"""A student as one GGUF file for llama.cpp, written with the ``gguf`` package (``GGUFWriter``, its
tensor-name map and its quantizers), atomically: a temp name, renamed when complete.

Tensor types, as llama.cpp's converter chooses them: 1-D tensors and norms F32; for F32/F16/BF16
files every matrix in that type; for Q8_0/Q4_0/TQ2_0 files the block linears in that type and the
token embedding / head in ``embeddings`` (F16 unless told, or what the QAT run trained them in).
Quantized tensors are made by ``gguf.quants.quantize`` (the package's port of ggml-quants.c), an
implementation independent of the torch one QAT trains with (``distill.quant.ggml``): the tests
check that the file dequantizes to exactly the QAT student's weights.

Everything that can refuse (architecture, MoE, LoRA, widths, tokenizer) is checked before the file is
opened, so a refusal leaves nothing behind; a failure while writing removes the temp file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from distill.cache import partial_name
from distill.errors import DistillError
from distill.export.arch import add_hparams, arch_of, gguf_tensors
from distill.export.vocab import add_vocab
from distill.quant.ggml import BLOCK_SIZE, FLOAT_TYPES, TYPES

log = logging.getLogger(__name__)
logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer logs every key and tensor at INFO

EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "tq2_0")
CONFIG_KEY = "ggml_qat"  # distill.quant.ggml_qat.CONFIG_KEY: what a ggml QAT/PTQ student was trained for
FILE_TYPE = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "tq2_0": "MOSTLY_TQ2_0",
}
EMBEDDINGS = ("token_embd.weight", "output.weight")


def trained_types(config) -> dict | None:
    """``{"weights": ..., "embeddings": ...}`` for a student made by quant=qat_*/ptq_* (ggml formats)."""
    record = getattr(config, CONFIG_KEY, None)
    return dict(record) if record else None


@dataclass(frozen=True)
class FileTypes:
    """The types of one file: ``qtype`` for the block matrices, ``embeddings`` for the token embedding
    and head, ``fallback`` for a matrix whose width the block size does not divide (None: refused)."""

    qtype: str
    embeddings: str
    fallback: str | None = None

    def pick(self, is_embedding: bool, ndim: int, width: int, norm: bool = False) -> str:
        if ndim <= 1 or norm:
            return "f32"
        t = self.embeddings if is_embedding else self.qtype
        if t in BLOCK_SIZE and width % BLOCK_SIZE[t] and self.fallback:
            return self.fallback  # as llama-quantize falls back (TQ2_0 -> Q4_0 on rows it cannot hold)
        return t


def resolve_types(
    requested: str | None, embeddings: str | None = None, trained: dict | None = None, fallback: str | None = None
) -> FileTypes:
    """The file's types. ``auto``: what the student was trained for, else f16. A QAT student exported
    to another block type would be quantized twice: refused."""
    requested = str(requested or "auto").lower()
    if requested not in (*EXPORT_TYPES, "auto"):
        raise DistillError(f"export.gguf must be auto or one of {', '.join(EXPORT_TYPES)}, got {requested!r}")
    if trained and requested not in ("auto", trained["weights"]) and requested in BLOCK_SIZE:
        raise DistillError(
            f"export.gguf={requested}: this student was trained for {trained['weights']} (quant=qat/ptq); "
            f"export it as {trained['weights']} (export.gguf=auto) or as f16/bf16/f32"
        )
    qtype = trained["weights"] if requested == "auto" and trained else ("f16" if requested == "auto" else requested)
    if qtype in FLOAT_TYPES:
        return FileTypes(qtype, qtype)
    embeddings = embeddings or (trained["embeddings"] if trained else "f16")
    fallback = fallback or (trained.get("fallback") if trained else None)
    for key, value in (("embeddings", embeddings), ("fallback", fallback)):
        if value is not None and value not in TYPES:
            raise DistillError(f"export.{key} must be one of {', '.join(TYPES)}, got {value!r}")
    return FileTypes(qtype, embeddings, fallback)


def tensor_type(gguf_name: str, shape, types: FileTypes) -> str:
    return types.pick(gguf_name in EMBEDDINGS, len(shape), shape[-1], gguf_name.endswith("_norm.weight"))


def check_student(model: nn.Module) -> None:
    """Refusals that do not depend on the type: architecture, MoE, unmerged LoRA."""
    arch_of(model.config)
    if hasattr(model, "peft_config") or any("lora_" in name for name in model.state_dict()):
        raise DistillError(
            "GGUF export: the student still holds unmerged LoRA adapters; merge them into the weights first "
            "(distill-train exports student/ merged)"
        )


def plan_tensors(model: nn.Module, types: FileTypes) -> list[tuple[str, str, object, str]]:
    """(HF name, GGUF name, fp32 tensor, type) for every tensor; refuses a width the block does not divide."""
    check_student(model)
    plan, bad = [], []
    for hf_name, gguf_name, data in gguf_tensors(model, arch_of(model.config)):
        t = tensor_type(gguf_name, data.shape, types)
        if t in BLOCK_SIZE and data.shape[-1] % BLOCK_SIZE[t]:
            bad.append(f"{hf_name} (width {data.shape[-1]})")
        plan.append((hf_name, gguf_name, data, t))
    if bad:
        t = next(p[3] for p in plan if f"{p[0]} (" in bad[0])
        raise DistillError(
            f"GGUF export: {t} quantizes rows in blocks of {BLOCK_SIZE[t]}; not a multiple: "
            + ", ".join(bad[:4])
            + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            + "; set export.fallback (e.g. q4_0, as llama-quantize does) for those matrices"
        )
    return plan


def encode(data, t: str):
    """(array, raw ggml type or None) as GGUFWriter.add_tensor takes them."""
    import gguf

    array = data.numpy().astype(np.float32, copy=False)
    if t == "f32":
        return array, None
    if t == "f16":
        return array.astype(np.float16), None
    qtype = getattr(gguf.GGMLQuantizationType, t.upper())
    return gguf.quants.quantize(array, qtype), qtype


def write_gguf(model: nn.Module, tokenizer_dir: Path, path: Path, types: FileTypes, name: str) -> dict:
    """Write ``model`` (a plain HF causal LM) and the tokenizer in ``tokenizer_dir`` to ``path``."""
    import gguf

    plan = plan_tensors(model, types)  # every refusal before the file exists
    qtype = types.qtype
    arch = arch_of(model.config)
    path = Path(path)
    tmp = partial_name(path)
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_name)])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPE[qtype]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hparams(writer, model.config, arch)
        vocab = add_vocab(writer, tokenizer_dir, model.config.vocab_size)
        counts: dict[str, int] = {}
        for _, gguf_name, data, t in plan:
            array, raw = encode(data, t)
            writer.add_tensor(gguf_name, array, raw_dtype=raw)
            counts[t] = counts.get(t, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    log.info(
        "GGUF %s: %s (%.2f MB; tensors by type %s; %d tokens, pre-tokenizer %s%s)",
        qtype,
        path,
        path.stat().st_size / 1e6,
        counts,
        vocab["tokens"],
        vocab["pre"],
        ", chat template" if vocab["chat_template"] else "",
    )
    return {
        "gguf.file": path.name,
        "gguf.type": qtype,
        "gguf.embeddings": types.embeddings,
        "gguf.bytes": path.stat().st_size,
        "gguf.tensors": counts,  # tensors per ggml type (a fallback type shows here)
    }
