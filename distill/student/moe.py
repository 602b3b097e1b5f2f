"""Sparse upcycling: a mixture-of-experts student grown out of a dense (pruned) student.

Komatsuzaki et al. (2022), "Sparse Upcycling": every expert of every MoE layer starts as a copy of
the dense layer's MLP, the router is new; attention, norms and embeddings are copied as they are.
The dense student here is the teacher pruned to every other layer (``base``), so the MoE starts
from the teacher's own weights and is then distilled from it like any other student.

Dense Llama / Mistral students become Mixtral; dense Qwen2 students become Qwen2-MoE (its always-on
shared expert is given width 0, so the two families compute the same thing); dense Qwen3 students
become Qwen3-MoE (no shared expert; q/k norms and head_dim kept).

Function preservation: both families renormalise the top-k routing weights to sum to 1, and with
identical experts ``sum_i w_i * f(x) == f(x)``, so at initialisation the MoE's logits equal the
dense student's (to float rounding). A consequence: at step 0 the router's gradient is zero too
(its weights only rescale identical outputs); the experts get different gradients because the
router sends them different tokens, they drift apart after the first update, and from then on the
router learns. ``expert_noise_std`` > 0 breaks the symmetry at once, at the price of exactness.

Parameter accounting (per token): ``params_active = params_total - layers * (E - k) * expert``,
which is ``dense_params + layers * ((k - 1) * expert + router)``: with full-width copies and k > 1
the MoE runs k dense-sized MLPs per token, so it equals the dense student's active size plus the
routers only when ``experts_per_token == 1``.
"""

from __future__ import annotations

import importlib
import re
import warnings

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from distill.errors import DistillError
from distill.student.prune import decoder_layers_name, every_other_layer
from distill.student.support import built_like, weightless

BASES = {"every_other_layer": every_other_layer}
TARGET = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}


def _dense_builder(base: str):
    """A short name from BASES, or the dotted path of any student builder ``f(teacher, vocab_size, train_blocks)``."""
    if base in BASES:
        return BASES[base]
    module, _, name = str(base).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise DistillError(
            f"unknown base {base!r} for moe_upcycle: use one of {', '.join(BASES)} "
            "or the dotted path of a student builder"
        ) from None


def _moe_config(dense: PreTrainedModel, num_experts: int, experts_per_token: int):
    c = dense.config
    kind = c.model_type
    if kind not in TARGET:
        raise DistillError(
            f"moe_upcycle turns llama, mistral, qwen2 or qwen3 students into MoEs; the dense student is {kind!r}"
        )
    if getattr(c, "mlp_bias", False) or (kind != "qwen2" and getattr(c, "attention_bias", False)):
        raise DistillError(
            f"moe_upcycle: this {kind} student has biases (attention_bias/mlp_bias) its MoE "
            f"counterpart {TARGET[kind]} does not have"
        )
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    keys = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        initializer_range=c.initializer_range,
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=c.rope_parameters,
        attention_dropout=c.attention_dropout,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        num_experts_per_tok=experts_per_token,
    )
    if kind in ("llama", "mistral"):
        keys.update(
            intermediate_size=c.intermediate_size,
            head_dim=head_dim,
            num_local_experts=num_experts,
            sliding_window=getattr(c, "sliding_window", None),
            router_jitter_noise=0.0,
        )
    elif kind == "qwen3":  # qwen3 -> qwen3_moe: every layer sparse, renormalised top-k
        keys.update(
            head_dim=head_dim,
            intermediate_size=c.intermediate_size,
            moe_intermediate_size=c.intermediate_size,
            num_experts=num_experts,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            attention_bias=c.attention_bias,
            use_sliding_window=c.use_sliding_window,
            sliding_window=c.sliding_window,
        )
    else:  # qwen2 -> qwen2_moe: every layer sparse, renormalised top-k, no shared expert
        if head_dim != c.hidden_size // c.num_attention_heads:
            raise DistillError("moe_upcycle: Qwen2-MoE has no separate head_dim; this qwen2 student sets one")
        keys.update(
            intermediate_size=c.intermediate_size,
            moe_intermediate_size=c.intermediate_size,
            shared_expert_intermediate_size=0,
            num_experts=num_experts,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            qkv_bias=True,
            use_sliding_window=c.use_sliding_window,
            sliding_window=c.sliding_window,
            max_window_layers=c.max_window_layers,
            layer_types=c.layer_types,
        )
    try:
        return CONFIG_MAPPING[TARGET[kind]](**keys)
    except Exception as e:
        raise DistillError(
            f"cannot build a {TARGET[kind]} config for the upcycled student: " + " ".join(str(e).split())
        ) from None


def upcycle(
    dense: PreTrainedModel,
    num_experts: int = 4,
    experts_per_token: int = 2,
    router_init_std: float = 0.02,
    expert_noise_std: float = 0.0,
    seed: int = 0,
) -> PreTrainedModel:
    """The MoE counterpart of ``dense``: experts = copies of its MLPs, fresh routers, the rest copied."""
    if not (
        isinstance(num_experts, int) and isinstance(experts_per_token, int) and 1 <= experts_per_token <= num_experts
    ):
        raise DistillError(
            f"moe_upcycle needs 1 <= experts_per_token <= num_experts, got {experts_per_token} of {num_experts}"
        )
    if router_init_std < 0 or expert_noise_std < 0:
        raise DistillError("moe_upcycle: router_init_std and expert_noise_std must be >= 0")
    config = _moe_config(dense, num_experts, experts_per_token)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")  # the width-0 shared expert
        torch.manual_seed(seed)
        with built_like(dense):  # a weightless dense student (plan=true) gives a weightless MoE
            moe = AutoModelForCausalLM.from_config(config)
    shapes_only = weightless(dense)

    layers = decoder_layers_name(dense) + "."
    mlp = re.compile(re.escape(layers) + r"(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight")
    state, parts = {}, {}
    for key, value in dense.state_dict().items():
        m = mlp.fullmatch(key)
        if m:
            parts.setdefault(int(m.group(1)), {})[m.group(2)] = value.detach().float()
        elif ".mlp." in key:
            raise DistillError(f"moe_upcycle: unexpected MLP weight {key} in the dense student")
        else:
            state[key] = value.detach().clone()
    target = moe.state_dict()
    for i, p in sorted(parts.items()):
        prefix = f"{layers}{i}.mlp."
        gate_up = torch.cat([p["gate_proj"], p["up_proj"]], dim=0)  # [2I, H]: gate rows first, then up (chunk(2))
        experts = {
            "experts.gate_up_proj": gate_up.expand(num_experts, *gate_up.shape).clone(),
            "experts.down_proj": p["down_proj"].expand(num_experts, *p["down_proj"].shape).clone(),
        }
        for name, w in experts.items():
            if expert_noise_std > 0 and not shapes_only:
                w += torch.randn(w.shape, generator=generator) * expert_noise_std * w.std()
            state[prefix + name] = w
        router = target[prefix + "gate.weight"]
        state[prefix + "gate.weight"] = (
            torch.empty_like(router)
            if shapes_only
            else torch.randn(router.shape, generator=generator) * router_init_std
        )
        for key, value in target.items():  # the zero-width shared expert of Qwen2-MoE, its gate
            if key.startswith(prefix + "shared_expert"):
                state[key] = torch.zeros_like(value)
    missing = set(target) - set(state)
    extra = set(state) - set(target)
    if missing or extra:
        raise DistillError(
            f"moe_upcycle: weight layout mismatch (missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})"
        )
    moe.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    return moe.to(next(dense.parameters()).dtype)


def active_params(moe: PreTrainedModel) -> tuple[int, int]:
    """(total, active per token) parameters of an upcycled MoE: only k of the E routed experts run."""
    c = moe.config
    experts = getattr(c, "num_local_experts", None) or c.num_experts
    total = sum(p.numel() for p in moe.parameters())
    per_expert = 0
    for module in moe.modules():
        if hasattr(module, "gate_up_proj") and hasattr(module, "down_proj"):
            per_expert += (module.gate_up_proj.numel() + module.down_proj.numel()) // experts
    return total, total - (experts - c.num_experts_per_tok) * per_expert


def moe_upcycle(
    teacher: PreTrainedModel | None,
    vocab_size: int,
    train_blocks=None,
    *,
    num_experts: int = 4,
    experts_per_token: int = 2,
    base: str = "every_other_layer",
    router_init_std: float = 0.02,
    expert_noise_std: float = 0.0,
    seed: int = 0,
) -> PreTrainedModel:
    """student=moe_upcycle: prune the teacher to a dense student (``base``), then upcycle it to an MoE."""
    if teacher is None:
        raise DistillError("student=moe_upcycle copies the teacher's weights: it needs a teacher (not teacher=none)")
    dense = _dense_builder(base)(teacher, vocab_size, train_blocks)
    moe = upcycle(dense, num_experts, experts_per_token, router_init_std, expert_noise_std, seed)
    total, active = active_params(moe)
    dense_params = sum(p.numel() for p in dense.parameters())
    router_params = sum(
        m.weight.numel() for n, m in moe.named_modules() if n.endswith(("mlp.gate", "mlp.shared_expert_gate"))
    )
    moe.pruning_report = {
        "method": "moe_upcycle",
        "base": base,
        "experts": num_experts,
        "experts_per_token": experts_per_token,
        "params_total": total,
        "params_active": active,
        "dense_params": dense_params,
        "router_params": router_params,
    }
    return moe
