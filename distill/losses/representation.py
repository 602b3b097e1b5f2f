"""Intermediate-representation distillation: hidden states and attention maps.

Logit KD only tells the student what to output; these terms also tell it how to get
there, by matching chosen layers of the teacher. Two families are supported:

* hidden states, by MSE (TinyBERT, Jiao et al. 2020, with a learned projection when the
  widths differ) or by ``1 − cos`` (DistilBERT, Sanh et al. 2019, whose cosine term
  aligns directions and ignores scale, which matters for pre-norm models like Llama,
  whose residual stream grows in norm with depth);
* attention maps, by KL(teacher ‖ student) of each query row's distribution over keys
  (MobileBERT, Sun et al. 2020; MiniLM, Wang et al. 2020, uses the same KL on the last
  layer's maps).

Conventions, shared by every function here:

* Layer indices are 0-based transformer-block indices. Index ``i`` means the output of
  block ``i``: ``hidden_states[i + 1]`` (HF puts the embeddings first, so it returns
  ``n_layers + 1`` tensors) and ``attentions[i]``. In transformers 5 the last entry of
  ``hidden_states`` is the output of the final norm, not the raw residual stream; every
  other entry is raw. Pairs are written ``(teacher_layer, student_layer)``.
* ``mask`` is ``[B, T]``, true (or nonzero) for real tokens; padding is excluded from
  every mean, so values at padded positions change nothing. ``None`` keeps every token.
* Everything is computed in float32 whatever the input dtype; results are float32.
* The pure functions are the whole maths; the modules only pick layers and own the
  projections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError

# Floor for the student's attention probabilities inside the log: keeps log 0 finite
# (and its gradient bounded) where a causal or padding mask zeroes a key.
_LOG_FLOOR = 1e-12


def _token_mask(mask: Tensor | None, shape: torch.Size) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    if mask.shape != shape:
        raise DistillError(f"mask shape {tuple(mask.shape)} does not match the tokens' shape {tuple(shape)}")
    return mask.bool()


def _masked_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``per_token`` [B, T, ...] over the masked tokens; 0 when none are.

    ``torch.where`` (not multiplication) so that inf/NaN at padded positions cannot leak in.
    """
    mask = mask.to(per_token.device)
    count = mask.sum() * math.prod(per_token.shape[2:])
    expanded = mask.view(*mask.shape, *([1] * (per_token.dim() - 2)))
    return torch.where(expanded, per_token, 0.0).sum() / count.clamp_min(1)


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise DistillError(f"{what}: student shape {tuple(a.shape)} != teacher shape {tuple(b.shape)}")


def hidden_mse(student_h: Tensor, teacher_h: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over real tokens of the mean squared error over features (TinyBERT's hidden loss)."""
    _check_same_shape(student_h, teacher_h, "hidden_mse")
    per_token = (student_h.float() - teacher_h.float()).pow(2).mean(-1)
    return _masked_mean(per_token, _token_mask(mask, per_token.shape))


def hidden_cosine(student_h: Tensor, teacher_h: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Mean over real tokens of ``1 − cos(student, teacher)`` (DistilBERT's cosine loss): scale-free."""
    _check_same_shape(student_h, teacher_h, "hidden_cosine")
    s = F.normalize(student_h.float(), dim=-1, eps=eps)
    t = F.normalize(teacher_h.float(), dim=-1, eps=eps)
    per_token = 1.0 - (s * t).sum(-1)
    return _masked_mean(per_token, _token_mask(mask, per_token.shape))


def match_heads(student_attn: Tensor, teacher_attn: Tensor) -> tuple[Tensor, Tensor]:
    """Bring both maps to one head count so they can be compared head by head.

    Equal counts: unchanged. Teacher heads = g·student heads: each run of g consecutive
    teacher heads is averaged into one (student head k ↔ teacher heads k·g … k·g+g−1).
    Otherwise there is no natural pairing, so every head of both is averaged into one
    map. An average of attention distributions is still a distribution, so the KL
    stays well defined.
    """
    hs, ht = student_attn.shape[1], teacher_attn.shape[1]
    if hs == ht:
        return student_attn, teacher_attn
    if ht % hs == 0:
        b, _, tq, tk = teacher_attn.shape
        return student_attn, teacher_attn.reshape(b, hs, ht // hs, tq, tk).mean(2)
    return student_attn.mean(1, keepdim=True), teacher_attn.mean(1, keepdim=True)


def attention_kl(student_attn: Tensor, teacher_attn: Tensor, mask: Tensor | None = None) -> Tensor:
    """KL(teacher ‖ student) over keys, per query row, mean over real query rows and heads.

    Inputs are post-softmax maps ``[B, heads, T, T]`` (head counts may differ, see
    ``match_heads``). Keys zeroed by a causal or padding mask are exact zeros in both:
    ``0·log 0`` is taken as 0 (``xlogy``) and the student's log is floored, so such rows
    give no NaN. Padded query rows are excluded by ``mask``; padded keys need no
    masking, both models already give them zero probability.
    """
    s_shape, t_shape = student_attn.shape, teacher_attn.shape
    if student_attn.dim() != 4 or s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]:
        raise DistillError(
            f"attention_kl: maps must be [B, heads, T, T] with equal B and T, got student "
            f"{tuple(student_attn.shape)} and teacher {tuple(teacher_attn.shape)}"
        )
    s, t = match_heads(student_attn.float(), teacher_attn.float())
    per_row = (torch.xlogy(t, t) - t * s.clamp_min(_LOG_FLOOR).log()).sum(-1)  # [B, H, T]
    per_row = per_row.transpose(1, 2)  # [B, T, H]: query rows first, for the token mask
    return _masked_mean(per_row, _token_mask(mask, per_row.shape[:2]))


def layer_pairs(spec, n_teacher_layers: int, n_student_layers: int) -> list[tuple[int, int]]:
    """Resolve a config's layer mapping into ``(teacher_layer, student_layer)`` pairs.

    ``"auto"`` or ``None``: every student layer ``j`` is matched to teacher layer
    ``ceil((j+1)·n_t/n_s) − 1``, i.e. uniformly spaced and ending with last ↔ last
    (teacher 8, student 4 → (1,0), (3,1), (5,2), (7,3)), the usual "every k-th layer"
    mapping of TinyBERT/DistilBERT. Otherwise a list of ``[teacher, student]`` pairs of
    0-based block indices (see the module docstring), checked against the layer counts.
    """
    pairs = parse_pairs(spec)
    if pairs is None:
        return [(-(-(j + 1) * n_teacher_layers // n_student_layers) - 1, j) for j in range(n_student_layers)]
    return [_check_range(t, s, n_teacher_layers, n_student_layers) for t, s in pairs]


def parse_pairs(spec) -> list[tuple[int, int]] | None:
    """A layer mapping checked for form only, before any model exists: ``None`` for ``"auto"``,
    else the ``(teacher_layer, student_layer)`` pairs (``layer_pairs`` checks their ranges)."""
    if spec is None or spec == "auto":
        return None
    if isinstance(spec, str) or not isinstance(spec, Sequence) or len(spec) == 0:
        raise DistillError(f"layer pairs must be 'auto' or a non-empty list of [teacher, student] pairs, got {spec!r}")
    return [_parse_pair(p) for p in spec]


def _parse_pair(pair) -> tuple[int, int]:
    ok = isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2
    if not ok or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
        raise DistillError(f"layer pair {pair!r} must be [teacher_layer, student_layer] (two integers)")
    return int(pair[0]), int(pair[1])


def _check_range(t: int, s: int, n_teacher: int, n_student: int) -> tuple[int, int]:
    if not 0 <= t < n_teacher:
        raise DistillError(
            f"layer pair [{t}, {s}]: teacher layer {t} is out of range, the teacher has layers 0..{n_teacher - 1}"
        )
    if not 0 <= s < n_student:
        raise DistillError(
            f"layer pair [{t}, {s}]: student layer {s} is out of range, the student has layers 0..{n_student - 1}"
        )
    return t, s


def _layer_outputs(outputs, what: str, flag: str) -> Sequence[Tensor]:
    if not outputs:
        raise DistillError(f"no {what} to distill: call the model with {flag}=True")
    return outputs


class HiddenStateLoss(nn.Module):
    """Hidden-state distillation over layer pairs, with learned projections when widths differ.

    The projections (``student_width → teacher_width``, one per pair, no bias, as
    TinyBERT's ``W_h``) live here and not in the student: they are trained by whatever
    optimizer owns this module's parameters and saved in Lightning checkpoints, but a
    student exported with ``save_pretrained`` carries none of them.
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], student_width: int, teacher_width: int, metric: str = "mse"):
        super().__init__()
        if metric not in _HIDDEN_METRICS:
            raise DistillError(f"hidden-state metric must be one of {sorted(_HIDDEN_METRICS)}, got {metric!r}")
        if not pairs:
            raise DistillError("hidden-state distillation needs at least one layer pair")
        self.pairs = [tuple(p) for p in pairs]
        self.metric = metric
        widths_differ = student_width != teacher_width
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width, bias=False) for _ in self.pairs if widths_differ
        )

    def forward(self, student_hidden_states, teacher_hidden_states, mask: Tensor | None = None) -> Tensor:
        s_all = _layer_outputs(student_hidden_states, "student hidden states", "output_hidden_states")
        t_all = _layer_outputs(teacher_hidden_states, "teacher hidden states", "output_hidden_states")
        fn = _HIDDEN_METRICS[self.metric]
        losses = []
        for k, (ti, si) in enumerate(self.pairs):
            s = s_all[si + 1]
            if self.projections:
                proj = self.projections[k]
                s = proj(s.to(proj.weight.dtype))
            losses.append(fn(s, t_all[ti + 1], mask))
        return torch.stack(losses).mean()


_HIDDEN_METRICS = {"mse": hidden_mse, "cosine": hidden_cosine}
HIDDEN_METRICS = tuple(_HIDDEN_METRICS)  # the choices of loss.hidden.metric


_EAGER_FLAGS = 'attn_implementation="eager" and output_attentions'


class AttentionLoss(nn.Module):
    """Attention-map distillation: ``attention_kl`` averaged over layer pairs. Has no parameters."""

    def __init__(self, pairs: Sequence[tuple[int, int]]):
        super().__init__()
        if not pairs:
            raise DistillError("attention-map distillation needs at least one layer pair")
        self.pairs = [tuple(p) for p in pairs]

    def forward(self, student_attentions, teacher_attentions, mask: Tensor | None = None) -> Tensor:
        # Under sdpa/flash, HF returns an empty tuple (with only a log warning): say why here.
        s_all = _layer_outputs(student_attentions, "student attention maps", _EAGER_FLAGS)
        t_all = _layer_outputs(teacher_attentions, "teacher attention maps", _EAGER_FLAGS)
        return torch.stack([attention_kl(s_all[si], t_all[ti], mask) for ti, si in self.pairs]).mean()


def require_eager_attention(model, name: str) -> None:
    """Fail early, in one line, if ``model`` cannot return attention maps.

    In transformers 5 only the eager implementation materialises attention weights; sdpa
    (the default) and flash return none for ``output_attentions=True``, with only a log
    warning, so the attention loss would otherwise fail later and less clearly.
    """
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl != "eager":
        raise DistillError(
            f'attention-map distillation needs attn_implementation="eager" but the {name} uses {impl!r}; '
            f"set attn_implementation=eager for the {name}"
        )


def use_eager_attention(model) -> None:
    """Switch a loaded HF model to eager attention in place (transformers 5: ``set_attn_implementation``)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # older transformers
        model.config._attn_implementation = "eager"
