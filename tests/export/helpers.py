"""Tiny saved students of every supported architecture, and reading GGUF files back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.data.tokenizer import train_bpe
from distill.export.arch import permute
from tests.student.tiny_models import TEXTS, tiny_model

VOCAB = 320  # the byte-level BPE's 256 bytes, the end-of-text token and some merges
# TQ2_0 blocks are 256 wide: every input width of the model a multiple of 256
WIDE = dict(hidden_size=256, intermediate_size=512, head_dim=64)


def saved_student(path: Path, arch: str = "llama", model=None, **overrides) -> Path:
    """A model dir as distill-train writes student/: safetensors weights and the byte-level BPE tokenizer."""
    train_bpe(TEXTS, VOCAB, path)
    (model if model is not None else tiny_model(arch, vocab_size=VOCAB, **overrides)).save_pretrained(path)
    return path


def read(path: Path):
    """(metadata field name -> value, tensor name -> (type name, fp32 values as the model uses them))."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, torch.from_numpy(np.array(values, dtype=np.float32)))
    return fields, tensors


def expected(model, arch: str) -> dict[str, torch.Tensor]:
    """The student's tensors under llama.cpp's names, transformed as llama.cpp reads them."""
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), model.config.num_hidden_layers)
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    out = {}
    for name, w in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        w = w.float()
        if arch == "llama" and "q_proj" in name:
            w = permute(w, heads)
        elif arch == "llama" and "k_proj" in name:
            w = permute(w, kv)
        if arch == "gemma" and name.endswith("norm.weight"):
            w = w + 1
        out[names.get_name(name, try_suffixes=(".weight", ".bias"))] = w
    return out
