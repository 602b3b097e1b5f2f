"""Tiny saved students of every supported architecture, and reading GGUF files back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.data.tokenizer import train_bpe
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
