"""Width pruning by activation importance (Minitron, Muralidharan et al. 2024).

On a calibration set drawn from the training data the teacher's activations score

* each **attention head**: L2 norm of its output (the input of ``o_proj`` / ``c_proj``)
  over ``head_dim``, L2 over the sequence, mean over the batch; a **KV group** (GQA)
  scores the sum of its query heads, and the query heads follow their group, so the
  GQA ratio and ``head_dim`` are unchanged;
* each **MLP channel**: the same aggregation of its activation (the input of
  ``down_proj`` / ``c_proj``: act(gate) * up for SwiGLU);
* each **hidden (embedding) channel**: the same aggregation of every LayerNorm /
  RMSNorm output (both norms of each block and the final one), summed over the norms.

Heads and MLP channels are ranked per layer (every layer keeps the same count, each its
own best ones); hidden channels are ranked once, since the residual stream is shared.
The kept indices stay in their original order, a smaller config is built and every
weight is sliced consistently (embeddings, projections, biases, norms, the LM head, GPT-2's
position embeddings and its fused Conv1D ``c_attn``), so the student is a plain,
smaller model of the same architecture that ``save_pretrained``/``from_pretrained`` handle.

GPT-2's attention width equals its hidden size (``head_dim = n_embd / n_head``), so there
the number of heads follows the hidden size: ``hidden = heads * head_dim``.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel

from distill.errors import DistillError
from distill.student.calibration import calibration_batches, forward_hooks, run_calibration
from distill.student.support import built_like, check_supported, weightless

log = logging.getLogger(__name__)

# When no size is given, the student keeps this share of the teacher's parameters
# (the depth-pruned every-other-layer student of the quickstart teacher is ~0.57).
DEFAULT_FRACTION = 0.55
CHANNEL_MULTIPLE = 8  # hidden/intermediate sizes found by the target search are multiples of this


@dataclass(frozen=True)
class Dims:
    """The widths that width pruning changes; ``head_dim`` and the GQA ratio stay fixed."""

    hidden: int
    intermediate: int
    kv_groups: int
    heads_per_group: int
    head_dim: int

    @property
    def heads(self) -> int:
        return self.kv_groups * self.heads_per_group


@dataclass
class Importance:
    """Calibration scores: ``hidden [H]``, ``intermediate [L, I]``, ``kv_groups [L, KV]`` (float32, CPU)."""

    hidden: Tensor
    intermediate: Tensor
    kv_groups: Tensor


@dataclass
class Keep:
    """Kept indices (sorted): hidden channels, per layer the MLP channels and KV groups."""

    hidden: Tensor
    intermediate: list[Tensor]
    kv_groups: list[Tensor]


# --- architecture layouts ---------------------------------------------------------------

_L = r"model\.layers\.(?P<layer>\d+)\."
_G = r"transformer\.h\.(?P<layer>\d+)\."

# Parameter name -> what each axis indexes: "hidden", "q" (query-head channels), "kv"
# (key/value-head channels), "qkv" (GPT-2's fused q|k|v), "inter" (MLP channels), None (kept whole).
_LLAMA_RULES = [
    (r"model\.embed_tokens\.weight", (None, "hidden")),
    (r"lm_head\.weight", (None, "hidden")),
    (r"model\.norm\.(weight|bias)", ("hidden",)),
    (_L + r"(input|post_attention|pre_feedforward|post_feedforward)_layernorm\.(weight|bias)", ("hidden",)),
    (_L + r"self_attn\.q_proj\.weight", ("q", "hidden")),
    (_L + r"self_attn\.q_proj\.bias", ("q",)),
    (_L + r"self_attn\.[kv]_proj\.weight", ("kv", "hidden")),
    (_L + r"self_attn\.[kv]_proj\.bias", ("kv",)),
    (_L + r"self_attn\.o_proj\.weight", ("hidden", "q")),
    (_L + r"self_attn\.o_proj\.bias", ("hidden",)),
    (_L + r"self_attn\.[qk]_norm\.weight", (None,)),  # Qwen3: per head_dim, unchanged
    (_L + r"mlp\.(gate|up)_proj\.weight", ("inter", "hidden")),
    (_L + r"mlp\.(gate|up)_proj\.bias", ("inter",)),
    (_L + r"mlp\.down_proj\.weight", ("hidden", "inter")),
    (_L + r"mlp\.down_proj\.bias", ("hidden",)),
]
# GPT-2's Conv1D stores weights as [in, out].
_GPT2_RULES = [
    (r"transformer\.(wte|wpe)\.weight", (None, "hidden")),
    (r"lm_head\.weight", (None, "hidden")),
    (r"transformer\.ln_f\.(weight|bias)", ("hidden",)),
    (_G + r"ln_[12]\.(weight|bias)", ("hidden",)),
    (_G + r"attn\.c_attn\.weight", ("hidden", "qkv")),
    (_G + r"attn\.c_attn\.bias", ("qkv",)),
    (_G + r"attn\.c_proj\.weight", ("q", "hidden")),
    (_G + r"attn\.c_proj\.bias", ("hidden",)),
    (_G + r"mlp\.c_fc\.weight", ("hidden", "inter")),
    (_G + r"mlp\.c_fc\.bias", ("inter",)),
    (_G + r"mlp\.c_proj\.weight", ("inter", "hidden")),
    (_G + r"mlp\.c_proj\.bias", ("hidden",)),
]


@dataclass(frozen=True)
class _Layout:
    layers: str
    attn_out: str  # the module whose input is the concatenated head outputs
    mlp_out: str  # the module whose input is the MLP activation
    norms: tuple[str, ...]  # per-layer norms whose outputs feed the hidden-channel score
    final_norm: str
    rules: list


_LLAMA = _Layout(
    "model.layers",
    "self_attn.o_proj",
    "mlp.down_proj",
    ("input_layernorm", "post_attention_layernorm"),
    "model.norm",
    _LLAMA_RULES,
)
_GPT2 = _Layout("transformer.h", "attn.c_proj", "mlp.c_proj", ("ln_1", "ln_2"), "transformer.ln_f", _GPT2_RULES)


def _layout(model: PreTrainedModel) -> _Layout:
    return _GPT2 if model.config.model_type == "gpt2" else _LLAMA


def teacher_dims(model: PreTrainedModel) -> Dims:
    c = model.config
    if c.model_type == "gpt2":
        return Dims(c.n_embd, c.n_inner or 4 * c.n_embd, c.n_head, 1, c.n_embd // c.n_head)
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return Dims(c.hidden_size, c.intermediate_size, kv, heads // kv, head_dim)


def _student_config(teacher: PreTrainedModel, dims: Dims):
    config = copy.deepcopy(teacher.config)
    if config.model_type == "gpt2":
        config.n_embd, config.n_head, config.n_inner = dims.hidden, dims.heads, dims.intermediate
    else:
        config.hidden_size, config.intermediate_size = dims.hidden, dims.intermediate
        config.num_attention_heads, config.num_key_value_heads = dims.heads, dims.kv_groups
        config.head_dim = dims.head_dim  # explicit: it would default to hidden / heads
    return config


def _rule(layout: _Layout, name: str) -> tuple[int | None, tuple]:
    for pattern, axes in layout.rules:
        m = re.fullmatch(pattern, name)
        if m:
            layer = m.groupdict().get("layer")
            return (int(layer) if layer is not None else None), axes
    raise DistillError(
        f"width pruning does not know how to slice {name!r}: an unsupported variant of this architecture?"
    )


def _axis_size(kind: str | None, dims: Dims, full: int) -> int:
    return {
        None: full,
        "hidden": dims.hidden,
        "q": dims.heads * dims.head_dim,
        "kv": dims.kv_groups * dims.head_dim,
        "qkv": 3 * dims.heads * dims.head_dim,
        "inter": dims.intermediate,
    }[kind]


def _shapes(teacher: PreTrainedModel) -> list[tuple[tuple, tuple]]:
    """(axis kinds, teacher shape) of every distinct parameter (tied weights once)."""
    layout = _layout(teacher)
    return [(_rule(layout, name)[1], tuple(p.shape)) for name, p in teacher.named_parameters()]


def params_for(teacher: PreTrainedModel | list, dims: Dims) -> int:
    """Exact parameter count of the width-pruned student with ``dims``, from the slicing rules."""
    shapes = _shapes(teacher) if isinstance(teacher, PreTrainedModel) else teacher
    return sum(math.prod(_axis_size(kind, dims, n) for kind, n in zip(axes, shape)) for axes, shape in shapes)


# --- importance ----------------------------------------------------------------------------


def _l2_seq_mean_batch(x: Tensor) -> Tensor:
    """[B, T, C] -> [C]: L2 over the sequence, summed over the batch (divided by the row count later)."""
    return x.float().norm(dim=1).sum(0)


def importance(teacher: PreTrainedModel, batches: list[Tensor]) -> Importance:
    """Minitron activation importance of hidden channels, MLP channels and KV groups."""
    layout, dims = _layout(teacher), teacher_dims(teacher)
    layers = teacher.get_submodule(layout.layers)
    n = len(layers)
    hidden = torch.zeros(dims.hidden)
    inter = torch.zeros(n, dims.intermediate)
    heads = torch.zeros(n, dims.heads)

    def on_norm(module, args, kwargs, output):
        hidden.add_(_l2_seq_mean_batch(output).cpu())

    def on_mlp(i):
        def hook(module, args, kwargs, output):
            inter[i].add_(_l2_seq_mean_batch(args[0]).cpu())

        return hook

    def on_attn(i):
        def hook(module, args, kwargs, output):
            x = args[0]
            per_head = x.float().unflatten(-1, (dims.heads, dims.head_dim)).norm(dim=-1)  # [B, T, heads]
            heads[i].add_(per_head.norm(dim=1).sum(0).cpu())

        return hook

    hooks = {teacher.get_submodule(layout.final_norm): on_norm}
    for i, layer in enumerate(layers):
        hooks[layer.get_submodule(layout.attn_out)] = on_attn(i)
        hooks[layer.get_submodule(layout.mlp_out)] = on_mlp(i)
        for norm in layout.norms:
            hooks[layer.get_submodule(norm)] = on_norm
    with forward_hooks(hooks):
        run_calibration(teacher, batches)
    rows = sum(len(b) for b in batches)
    groups = heads.view(n, dims.kv_groups, dims.heads_per_group).sum(-1)
    return Importance(hidden / rows, inter / rows, groups / rows)


def top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, in original order (ties keep the earlier channel)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


def select(imp: Importance, dims: Dims) -> Keep:
    return Keep(
        top(imp.hidden, dims.hidden),
        [top(s, dims.intermediate) for s in imp.intermediate],
        [top(s, dims.kv_groups) for s in imp.kv_groups],
    )


# --- slicing -------------------------------------------------------------------------------


def _indices(kind: str, layer: int | None, keep: Keep, teacher: Dims) -> Tensor:
    if kind == "hidden":
        return keep.hidden
    if kind == "inter":
        return keep.intermediate[layer]
    d = teacher.head_dim
    groups = keep.kv_groups[layer]
    kv = (groups[:, None] * d + torch.arange(d)).flatten()
    # query head h uses KV group h // heads_per_group: a group's query heads are contiguous
    q_heads = (groups[:, None] * teacher.heads_per_group + torch.arange(teacher.heads_per_group)).flatten()
    q = (q_heads[:, None] * d + torch.arange(d)).flatten()
    if kind == "q":
        return q
    if kind == "kv":
        return kv
    width = teacher.heads * d  # "qkv": GPT-2's [q | k | v], one KV group per head
    return torch.cat([q, q + width, q + 2 * width])


def slice_model(teacher: PreTrainedModel, keep: Keep, dims: Dims) -> PreTrainedModel:
    """A new model of ``dims`` holding the teacher's weights at the ``keep`` indices."""
    layout, full = _layout(teacher), teacher_dims(teacher)
    with built_like(teacher):
        student = AutoModelForCausalLM.from_config(_student_config(teacher, dims))
    state = {}
    for name, value in teacher.state_dict().items():
        layer, axes = _rule(layout, name)
        for axis, kind in enumerate(axes):
            if kind is not None:
                value = value.index_select(axis, _indices(kind, layer, keep, full).to(value.device))
        state[name] = value.detach().clone()
    student.load_state_dict(state, strict=True)
    return student.to(next(teacher.parameters()).dtype)


# --- sizes ---------------------------------------------------------------------------------


def _check_dim(name: str, value, limit: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise DistillError(
            f"width pruning: {name} must be an integer between 1 and the teacher's {limit}, got {value!r}"
        )
    return value


def _resolve_dims(teacher: PreTrainedModel, hidden_size, intermediate_size, num_kv_groups, target_params) -> Dims:
    full = teacher_dims(teacher)
    gpt2 = teacher.config.model_type == "gpt2"
    hidden = _check_dim("hidden_size", hidden_size, full.hidden)
    inter = _check_dim("intermediate_size", intermediate_size, full.intermediate)
    kv = _check_dim("num_kv_groups", num_kv_groups, full.kv_groups)
    if gpt2:  # heads * head_dim == hidden
        if hidden is not None and hidden % full.head_dim:
            raise DistillError(
                f"width pruning GPT-2: hidden_size must be a multiple of head_dim {full.head_dim} "
                f"(its heads follow the hidden size), got {hidden}"
            )
        if hidden is not None and kv is not None and hidden != kv * full.head_dim:
            raise DistillError(
                f"width pruning GPT-2: hidden_size {hidden} must equal num_kv_groups {kv} x head_dim "
                f"{full.head_dim}; give only one of them"
            )
        if kv is not None:
            hidden = kv * full.head_dim

    def dims(h: int, i: int) -> Dims:
        g = h // full.head_dim if gpt2 else (kv if kv is not None else full.kv_groups)
        return Dims(h, i, g, full.heads_per_group, full.head_dim)

    if target_params is None:
        if (hidden, inter, kv) != (None, None, None):
            return dims(hidden or full.hidden, inter or full.intermediate)
        target_params = DEFAULT_FRACTION
    if isinstance(target_params, bool) or not isinstance(target_params, (int, float)) or target_params <= 0:
        raise DistillError(
            f"width pruning: target_params must be a parameter count or a fraction in (0, 1), got {target_params!r}"
        )
    shapes = _shapes(teacher)
    before = params_for(shapes, full)
    target = int(target_params * before) if target_params < 1 else int(target_params)

    # Candidate widths: the given ones, else multiples of 8 (GPT-2's hidden: of head_dim) up to the teacher's.
    def grid(given: int | None, size: int, step: int) -> list[int]:
        return [given] if given is not None else sorted({*range(min(step, size), size + 1, min(step, size)), size})

    widths = grid(inter, full.intermediate, CHANNEL_MULTIPLE)
    best = None
    for h in grid(hidden, full.hidden, full.head_dim if gpt2 else CHANNEL_MULTIPLE):
        # The count is affine in the intermediate size: solve for the widest MLP that fits.
        base = params_for(shapes, dims(h, 0))
        per_channel = params_for(shapes, dims(h, 1)) - base
        fitting = [i for i in widths if base + per_channel * i <= target]
        if not fitting:
            continue
        i = fitting[-1]
        # Shrink as evenly as possible: the largest smallest-ratio, then the most parameters.
        score = (min(h / full.hidden, i / full.intermediate), base + per_channel * i)
        if best is None or score > best[0]:
            best = (score, dims(h, i))
    if best is None:
        d = dims(grid(hidden, full.hidden, full.head_dim if gpt2 else CHANNEL_MULTIPLE)[0], widths[0])
        raise DistillError(
            f"width pruning cannot reach target_params={target:,}: the narrowest student "
            f"(hidden {d.hidden}, intermediate {d.intermediate}, {d.kv_groups} KV groups) "
            f"has {params_for(shapes, d):,} parameters"
        )
    if best[1] == full:
        log.warning(
            "width pruning: target_params=%s is not below the teacher's %s parameters: nothing is pruned",
            f"{target:,}",
            f"{before:,}",
        )
    return best[1]


def _summary(scores: Tensor, kept: list[Tensor]) -> dict:
    scores = scores.reshape(-1, scores.shape[-1])
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for row, idx in zip(mask, kept):
        row[idx] = True
    out = {"mean": float(scores.mean()), "max": float(scores.max()), "kept_min": float(scores[mask].min())}
    out["dropped_max"] = float(scores[~mask].max()) if (~mask).any() else None
    return out


def _calibration(teacher: PreTrainedModel, train_blocks, samples: int, batch_size: int, seed: int) -> list[Tensor]:
    batches = calibration_batches(train_blocks, samples, batch_size, seed)
    vocab = teacher.get_input_embeddings().num_embeddings
    if max(int(b.max()) for b in batches) >= vocab:
        raise DistillError(f"calibration token ids exceed the teacher's vocabulary of {vocab}: wrong tokenizer?")
    max_len = getattr(teacher.config, "max_position_embeddings", None)
    return [b[:, :max_len] for b in batches] if max_len else batches


def width_pruned(
    teacher: PreTrainedModel | None,
    vocab_size: int | None = None,
    train_blocks: np.ndarray | None = None,
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_kv_groups: int | None = None,
    target_params: int | float | None = None,
    calibration_samples: int = 64,
    calibration_batch_size: int = 8,
    seed: int = 0,
) -> PreTrainedModel:
    """The teacher narrowed to its most important hidden channels, MLP channels and KV groups.

    Sizes, any combination:

    * ``hidden_size``, ``intermediate_size``: the student's widths (at most the teacher's);
    * ``num_kv_groups``: KV heads to keep; each keeps its query heads (GQA ratio and
      ``head_dim`` unchanged). GPT-2 has one head per group and ``hidden = heads * head_dim``,
      so there this and ``hidden_size`` determine each other;
    * ``target_params``: a parameter count, or a fraction of the teacher's when below 1.
      The dimensions not given explicitly shrink about evenly (hidden and
      intermediate multiples of 8, GPT-2's hidden a multiple of
      ``head_dim``; KV groups are kept unless given): of the students with at most this
      many parameters, the one whose smallest kept share (hidden or intermediate) is
      largest, then the one with the most parameters.

    With nothing given, ``target_params`` is 0.55 of the teacher's parameters.
    Importance is measured on ``calibration_samples`` rows of ``train_blocks`` chosen with
    ``seed``. ``vocab_size`` is unused: the student keeps the teacher's vocabulary.
    The returned model carries ``pruning_report``.
    """
    if teacher is None:
        raise DistillError("width pruning builds the student from the teacher, but no teacher is configured")
    check_supported(teacher, "width pruning")
    full = teacher_dims(teacher)
    dims = _resolve_dims(teacher, hidden_size, intermediate_size, num_kv_groups, target_params)

    if weightless(teacher):  # shapes only (plan=true): every channel scores alike, the first ones are kept
        n = teacher.config.num_hidden_layers
        imp = Importance(torch.zeros(full.hidden), torch.zeros(n, full.intermediate), torch.zeros(n, full.kv_groups))
    else:
        imp = importance(
            teacher, _calibration(teacher, train_blocks, calibration_samples, calibration_batch_size, seed)
        )
    keep = select(imp, dims)
    student = slice_model(teacher, keep, dims)

    report = {
        "method": "width",
        "kept": {"hidden": dims.hidden, "intermediate": dims.intermediate, "kv_groups": dims.kv_groups},
        "teacher": {"hidden": full.hidden, "intermediate": full.intermediate, "kv_groups": full.kv_groups},
        "importance": {
            "hidden": _summary(imp.hidden, [keep.hidden]),
            "intermediate": _summary(imp.intermediate, keep.intermediate),
            "kv_groups": _summary(imp.kv_groups, keep.kv_groups),
        },
        "params_before": sum(p.numel() for p in teacher.parameters()),
        "params_after": sum(p.numel() for p in student.parameters()),
    }
    log.info(
        "width pruning: keeping hidden %d/%d, intermediate %d/%d, KV groups %d/%d (%d query heads, head_dim %d): "
        "%s -> %s parameters",
        dims.hidden,
        full.hidden,
        dims.intermediate,
        full.intermediate,
        dims.kv_groups,
        full.kv_groups,
        dims.heads,
        dims.head_dim,
        f"{report['params_before']:,}",
        f"{report['params_after']:,}",
    )
    student.pruning_report = report
    return student
