"""Students (and teachers) built from scratch: any Hugging Face causal-LM architecture from flat sizes.

``build_llama`` is the original Llama-only path (the teacher-from-scratch and the tests use it);
``scratch_student`` is the ``student=scratch`` builder: it maps our flat names (hidden_size,
num_layers, num_heads, num_kv_heads, intermediate_size, max_seq_len, num_experts,
experts_per_token) onto each family's own config keys, so a student can be a Llama, Mistral,
Qwen2/3, Gemma, GPT-2, or a mixture-of-experts Mixtral / Qwen2-MoE / Qwen3-MoE of the same size,
always with the teacher's vocabulary.
"""

from __future__ import annotations

import dataclasses

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from distill.errors import DistillError

# The families whose config keys are wired (and tested) explicitly. Any other causal-LM model_type
# goes through the standard names (hidden_size, num_hidden_layers, ...), which most HF decoder
# configs accept directly or through their ``attribute_map``; a family whose keys differ can be
# fed its own keys through ``extra_config``.
DENSE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2")
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
KNOWN = DENSE + MOE

DEFAULT_SIZE = dict(hidden_size=256, num_layers=4, num_heads=4)  # today's scratch student, unchanged
DEFAULT_EXPERTS = dict(num_experts=8, experts_per_token=2)  # Mixtral's shape, when an MoE family gets none

# Presets by size. Parameter counts measured (not estimated) for a Llama with tied embeddings, MHA
# (num_kv_heads == num_heads), the 8/3 SwiGLU rule for intermediate_size, at vocab_size 4096:
#   preset  hidden  layers  heads  intermediate     params   (embedding share)
#   1m          96       6      3           256   1,058,016   (0.39M)
#   5m         256       5      4           704   5,065,472   (1.05M)
#   20m        384      10      6          1024  19,275,648   (1.57M)
#   100m       768      14     12          2048 102,258,432   (3.15M)
# Other architectures take the same dims (counts differ slightly: biases, norms, GPT-2's 4x MLP and
# learned positions; an MoE family multiplies the MLP by num_experts, its active count by k).
PRESETS = {
    "1m": dict(hidden_size=96, num_layers=6, num_heads=3),
    "5m": dict(hidden_size=256, num_layers=5, num_heads=4),
    "20m": dict(hidden_size=384, num_layers=10, num_heads=6),
    "100m": dict(hidden_size=768, num_layers=14, num_heads=12),
}


def swiglu_width(hidden_size: int) -> int:
    """SwiGLU's usual 8/3 ratio, rounded up to a multiple of 64 for fast matmuls."""
    return -(-hidden_size * 8 // 3 // 64) * 64


def build_llama(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_seq_len: int = 256,
    tie_embeddings: bool = True,
    eos_token_id: int | None = None,
) -> LlamaForCausalLM:
    if hidden_size % num_heads:
        raise DistillError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if min(vocab_size, hidden_size, num_layers, num_heads) < 1:
        raise DistillError("model sizes (vocab, hidden, layers, heads) must all be >= 1")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size or swiglu_width(hidden_size),
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return LlamaForCausalLM(config)


def _family_keys(
    arch: str,
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    inter: int | None,
    seq: int,
    experts: int | None,
    k: int | None,
) -> dict:
    """Our flat sizes in ``arch``'s own config keys."""
    if arch == "gpt2":
        if kv_heads != heads:
            raise DistillError(f"gpt2 has no grouped-query attention: num_kv_heads ({kv_heads}) must equal num_heads")
        # GPT-2's MLP is a plain 4x GELU one: n_inner=None means 4 * hidden.
        return dict(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inter, n_positions=seq)
    keys = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inter or swiglu_width(hidden),
        max_position_embeddings=seq,
    )
    if arch == "mistral":
        keys["sliding_window"] = None  # full attention: the window (4096) is longer than our blocks anyway
    if arch == "mixtral":  # intermediate_size is each expert's width
        keys.update(num_local_experts=experts, num_experts_per_tok=k)
    elif arch in ("qwen2_moe", "qwen3_moe"):
        # Routed experts of width moe_intermediate_size; Qwen2-MoE adds one always-on shared expert
        # (the same width by default; extra_config.shared_expert_intermediate_size changes it).
        keys.update(num_experts=experts, num_experts_per_tok=k, moe_intermediate_size=keys["intermediate_size"])
        if arch == "qwen2_moe":
            keys["shared_expert_intermediate_size"] = keys["intermediate_size"]
    return keys


def scratch_config(
    vocab_size: int,
    *,
    architecture: str = "llama",
    preset: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_seq_len: int = 256,
    num_experts: int | None = None,
    experts_per_token: int | None = None,
    tie_embeddings: bool = True,
    eos_token_id: int | list[int] | None = None,
    **extra_config,
) -> PretrainedConfig:
    """The config ``scratch_student`` builds, checked: explicit sizes win over the preset, which wins
    over the defaults; ``extra_config`` (the family's own keys) is applied last and wins over all."""
    arch = str(architecture).lower()
    if arch not in CONFIG_MAPPING:
        raise DistillError(
            f"unknown architecture {architecture!r}: use one of {', '.join(KNOWN)} "
            "or another Hugging Face causal-LM model_type"
        )
    if arch not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise DistillError(f"architecture {architecture!r} is not a causal language model in transformers")
    if preset is not None and str(preset).lower() not in PRESETS:
        raise DistillError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    base = PRESETS[str(preset).lower()] if preset is not None else DEFAULT_SIZE
    given = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads)
    size = {name: value if value is not None else base[name] for name, value in given.items()}
    hidden, layers, heads = size["hidden_size"], size["num_layers"], size["num_heads"]
    kv_heads = num_kv_heads if num_kv_heads is not None else heads

    sizes = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        max_seq_len=max_seq_len,
    )
    if intermediate_size is not None:
        sizes["intermediate_size"] = intermediate_size
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in sizes.values()):
        raise DistillError(
            "model sizes must be integers >= 1, got " + ", ".join(f"{k}={v!r}" for k, v in sizes.items())
        )
    if hidden % heads:
        raise DistillError(f"hidden_size {hidden} is not divisible by num_heads {heads}")
    if heads % kv_heads:
        raise DistillError(f"num_heads {heads} is not divisible by num_kv_heads {kv_heads}")

    config_class = CONFIG_MAPPING[arch]
    fields = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else set()
    experts_key = next((key for key in ("num_local_experts", "num_experts") if key in fields), None)
    is_moe = arch in MOE or (arch not in KNOWN and experts_key and "num_experts_per_tok" in fields)
    experts = k = None
    if is_moe:
        experts = num_experts if num_experts is not None else DEFAULT_EXPERTS["num_experts"]
        k = experts_per_token if experts_per_token is not None else min(DEFAULT_EXPERTS["experts_per_token"], experts)
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in (experts, k)) or k > experts:
            raise DistillError(f"need 1 <= experts_per_token <= num_experts, got {k} of {experts}")
    elif num_experts is not None or experts_per_token is not None:
        raise DistillError(
            f"num_experts/experts_per_token need a mixture-of-experts architecture "
            f"({', '.join(MOE)}, ...); {arch!r} is dense"
        )

    keys = _family_keys(
        arch,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        inter=intermediate_size,
        seq=max_seq_len,
        experts=experts,
        k=k,
    )
    if is_moe and arch not in MOE:  # another MoE family: its expert count and k under their usual names
        keys.update({experts_key: experts, "num_experts_per_tok": k})
    special = eos_token_id[0] if isinstance(eos_token_id, (list, tuple)) else eos_token_id
    keys.update(
        vocab_size=vocab_size,
        tie_word_embeddings=bool(tie_embeddings),
        bos_token_id=special,
        eos_token_id=eos_token_id,
        pad_token_id=special,
    )
    # Hydra hands nested values over as DictConfig/ListConfig; the strict HF configs want plain ones.
    keys.update(
        {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in extra_config.items()}
    )
    # Families with an explicit head_dim default it to a fixed number (Qwen3: 128, Gemma: 256), not
    # hidden / heads: pin it to the width we were asked for unless the caller set it.
    if "head_dim" not in keys and "head_dim" in fields:
        keys["head_dim"] = hidden // heads
    try:
        config = config_class(**keys)
    except Exception as e:  # strict-dataclass validation, family-specific checks
        raise DistillError(f"cannot build a {arch} config: " + " ".join(str(e).split())) from None
    return config


def scratch_student(
    teacher: PreTrainedModel | None,
    vocab_size: int,
    train_blocks=None,
    *,
    architecture: str = "llama",
    preset: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_seq_len: int = 256,
    num_experts: int | None = None,
    experts_per_token: int | None = None,
    tie_embeddings: bool = True,
    **extra_config,
) -> PreTrainedModel:
    """A randomly initialised causal LM of any HF architecture that shares the teacher's vocabulary
    (no teacher needed: with teacher=none or a cache the pipeline fills in the tokenizer's EOS).

    With no architecture and no preset it is exactly ``build_llama``'s default student
    (hidden 256, 4 layers, 4 heads, SwiGLU 8/3 width, tied embeddings)."""
    eos = teacher.config.eos_token_id if teacher is not None else None
    config = scratch_config(
        vocab_size,
        architecture=architecture,
        preset=preset,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_seq_len=max_seq_len,
        num_experts=num_experts,
        experts_per_token=experts_per_token,
        tie_embeddings=tie_embeddings,
        eos_token_id=eos,
        **extra_config,
    )
    try:
        model = AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise DistillError(f"cannot build a {config.model_type} model: " + " ".join(str(e).split())) from None
    rows = model.get_output_embeddings().weight.shape[0]
    embed = model.get_input_embeddings().weight.shape
    if rows != vocab_size or embed[0] != vocab_size:
        raise DistillError(
            f"the {config.model_type} student has {embed[0]} input / {rows} output rows "
            f"for a vocabulary of {vocab_size}"
        )
    if config.model_type not in KNOWN:
        check_causal(model)
    return model


@torch.no_grad()
def check_causal(model: PreTrainedModel) -> None:
    """A family outside the tested ones must not look ahead (some encoders are listed as causal LMs):
    the first position's logits may not depend on later tokens."""
    was_training = model.training
    model.eval()
    vocab = model.get_input_embeddings().weight.shape[0]
    tokens = torch.arange(8).remainder(vocab).unsqueeze(0)
    device = next(model.parameters()).device
    try:
        a = model(tokens.to(device)).logits[0, 0]
        b = model(torch.cat([tokens[:, :1], tokens[:, 1:].flip(1)], 1).to(device)).logits[0, 0]
    finally:
        model.train(was_training)
    if not torch.allclose(a, b, atol=1e-5):
        raise DistillError(
            f"the {model.config.model_type} model attends to later tokens, so it cannot be a causal "
            "student (if the family has one, set its decoder switch, e.g. is_decoder: true)"
        )
