"""What llama.cpp needs to know about a student's architecture: its GGUF architecture, the
hyperparameters in the metadata, and the tensors under llama.cpp's names, as llama.cpp's
``convert_hf_to_gguf.py`` (``conversion/llama.py``, ``qwen.py``, ``gemma.py``, ``base.py``) writes them.

The architecture-specific steps, each as the converter does it:
- Llama and Mistral (GGUF ``llama``): llama.cpp's rope rotates adjacent pairs of each head, HF's
  rotates the two halves, so q_proj and k_proj rows are permuted per head (``permute_qk``). The
  permutation moves whole rows, so a quantized row's blocks are unchanged.
- Gemma: HF's RMSNorm multiplies by ``1 + weight``, llama.cpp's by ``weight``: norms get ``+ 1``.
  The head is tied to the embedding (no ``output.weight``); llama.cpp scales embeddings itself.
- Qwen2 (biases on q, k, v) and Qwen3 (q/k RMSNorms) map one to one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from distill.errors import DistillError


@dataclass(frozen=True)
class Arch:
    gguf_name: str  # the gguf package's MODEL_ARCH member
    permute_qk: bool = False
    norm_plus_one: bool = False


# HF ``architectures[0]`` -> how it maps; the students distill builds are these (and GPT-2, which
# llama.cpp runs under another layout we do not convert)
ARCHS = {
    "LlamaForCausalLM": Arch("LLAMA", permute_qk=True),
    "MistralForCausalLM": Arch("LLAMA", permute_qk=True),
    "Qwen2ForCausalLM": Arch("QWEN2"),
    "Qwen3ForCausalLM": Arch("QWEN3"),
    "GemmaForCausalLM": Arch("GEMMA", norm_plus_one=True),
}
# config keys whose presence makes a model a mixture of experts (Mixtral, Qwen2-MoE, distill's moe_upcycle)
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def arch_of(config) -> Arch:
    name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    experts = next((getattr(config, k) for k in MOE_KEYS if getattr(config, k, None)), None)
    if experts:
        raise DistillError(
            f"GGUF export: {name} is a mixture of experts ({experts} experts); distill-export converts dense "
            f"students only ({', '.join(ARCHS)})"
        )
    if name not in ARCHS:
        raise DistillError(
            f"GGUF export: architecture {name} is not supported; llama.cpp export covers {', '.join(ARCHS)}"
        )
    return ARCHS[name]


def rope_theta(config) -> float:
    """transformers 5 keeps rope settings in ``rope_parameters``; only plain rope is converted."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise DistillError(
            f"GGUF export: rope scaling {kind!r} is not converted (only plain rope); the student's config.json "
            "sets rope_parameters.rope_type"
        )
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_hparams(writer, config, arch: Arch) -> None:
    """The hyperparameter keys llama.cpp reads for these architectures (``TextModel.set_gguf_parameters``)."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    if arch.gguf_name == "LLAMA":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim(config))


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's half-split rope layout -> llama.cpp's interleaved one (``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model, arch: Arch) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(HF name, GGUF name, fp32 tensor) for every weight llama.cpp reads, transformed for it."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_name), config.num_hidden_layers)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("lm_head.weight") and (tied or arch.gguf_name == "GEMMA"):
            continue  # llama.cpp reads the head from token_embd.weight when output.weight is absent
        if "rotary_emb" in hf_name:
            continue  # computed by llama.cpp
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise DistillError(f"GGUF export: no llama.cpp name for tensor {hf_name} of {arch.gguf_name.lower()}")
        data = tensor.detach().float().cpu()
        if arch.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, config.num_attention_heads)
        elif arch.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, n_kv)
        if arch.norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + 1
        yield hf_name, gguf_name, data
