"""Depth pruning: keep a subset of the teacher's layers (DistilBERT-style initialisation).

Works on any HF model whose blocks sit in one ``nn.ModuleList`` (Llama, Qwen2, Mistral,
GPT-2 decoders; BERT encoders, ``encoder.layer``): the student is built from the teacher's
config with fewer layers and the kept layers' weights are copied across, renumbered.
"""

from __future__ import annotations

import copy
import re

from transformers import PreTrainedModel

from distill.errors import DistillError
from distill.student.blocks import decoder_blocks
from distill.student.support import built_like


def decoder_layers_name(model: PreTrainedModel) -> str:
    """Dotted name of the ModuleList holding the decoder blocks."""
    return decoder_blocks(model)[0]


def keep_layers(teacher: PreTrainedModel, keep: list[int]) -> PreTrainedModel:
    n = teacher.config.num_hidden_layers
    if not keep or sorted(set(keep)) != sorted(keep) or not all(0 <= i < n for i in keep):
        raise DistillError(f"layers to keep must be distinct indices in [0, {n}), got {keep}")
    prefix = decoder_layers_name(teacher) + "."
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Qwen2, Gemma...)
        config.layer_types = [config.layer_types[i] for i in keep]
    # the teacher's own class: a causal LM stays one, an encoder (BertModel, layers in encoder.layer) too
    with built_like(teacher):  # a weightless teacher gives a weightless student
        student = type(teacher)._from_config(config)
    new_index = {old: new for new, old in enumerate(sorted(keep))}
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    state = {}
    for key, value in teacher.state_dict().items():
        m = pattern.fullmatch(key)
        if m is None:
            state[key] = value.clone()
        elif int(m.group(1)) in new_index:
            state[f"{prefix}{new_index[int(m.group(1))]}.{m.group(2)}"] = value.clone()
    student.load_state_dict(state, strict=True)
    return student.to(next(teacher.parameters()).dtype)


def every_other_layer(
    teacher: PreTrainedModel, vocab_size: int | None = None, train_blocks=None, offset: int = 0
) -> PreTrainedModel:
    """Keep layers offset, offset+2, ... (DistilBERT keeps every other layer of BERT)."""
    n = teacher.config.num_hidden_layers
    if n < 2:
        raise DistillError(f"the teacher has {n} layer(s); keeping every other layer needs at least 2")
    return keep_layers(teacher, list(range(offset % 2, n, 2)))


def listed_layers(
    teacher: PreTrainedModel, vocab_size: int | None = None, train_blocks=None, layers: list[int] = (0, -2, -1)
) -> PreTrainedModel:
    """Keep the listed layers, in order; negative indices count from the end, as in Python.

    The default, the first and the last two blocks, keeps both ends of the network: for the
    MiniLM sentence encoder it starts closest to the teacher (experiments/minilm_embed)."""
    n = teacher.config.num_hidden_layers
    return keep_layers(teacher, [i + n if i < 0 else i for i in layers])
