"""The training objective: weighted loss terms, chosen and weighted in ``configs/loss/``.

Terms on the output distribution (``forward_kl``, ``reverse_kl``, ``jsd``, ``tvd``, ``ce``)
go through one memory-bounded engine: chunked over tokens on logits, or fused with the
LM head (``fused_linear: true``) so no [tokens × vocab] logits exist at all. Terms on
internal representations (``hidden``, ``attention``) are small modules bound to the
models' shapes by ``bind``; their projections train with the student but live here, not in
the student, so they are never exported.

Weights and the temperature are plain attributes so loss-schedule callbacks can change
them between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.divergences import chunked_logit_loss
from distill.losses.fused_linear import fused_linear_loss
from distill.losses.representation import AttentionLoss, HiddenStateLoss, layer_pairs
from distill.teacher.outputs import TAIL_MODES, SparseTeacher

LOGIT_TERMS = ("forward_kl", "reverse_kl", "jsd", "tvd", "ce")
FEATURE_TERMS = ("hidden", "attention")
TERMS = LOGIT_TERMS + FEATURE_TERMS


@dataclass
class Outputs:
    """What one model produced for a batch; only what the objective asked for is filled."""

    logits: Tensor | SparseTeacher | None = None  # [B, T, V] (trimmed to the tokenizer) or the cache's top-k
    last_hidden: Tensor | None = None  # [B, T, H] final hidden state, for the fused LM-head loss
    head_weight: Tensor | None = None  # [V_rows, H] the LM head, for the fused loss
    head_bias: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # HF output_hidden_states (embeddings first)
    attentions: tuple[Tensor, ...] | None = None  # HF output_attentions
    vocab_size: int | None = None  # tokens of the tokenizer: LM-head rows past it are padding
    router_aux: Tensor | None = None  # an MoE student's load-balancing loss, already × its router_aux_loss_coef


@dataclass
class OnPolicy:
    """GKD-style mixing (Agarwal et al. 2024): with probability ``lmbda`` a batch's continuations
    are sampled from the student and scored by the teacher; ``lmbda=0`` is off-policy."""

    lmbda: float = 0.0
    max_new_tokens: int = 32
    temperature: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.lmbda <= 1.0:
            raise DistillError(f"loss.on_policy.lmbda must be in [0, 1], got {self.lmbda}")
        if self.max_new_tokens < 1:
            raise DistillError(f"loss.on_policy.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise DistillError(f"loss.on_policy.temperature must be >= 0 (0 = greedy), got {self.temperature}")


class Objective(nn.Module):
    def __init__(
        self,
        weights: dict[str, float],
        temperature: float = 1.0,
        beta: float = 0.5,
        tail: str = "bucket",
        chunk_size: int = 256,
        fused_linear: bool = False,
        hidden: dict | None = None,
        attention: dict | None = None,
        on_policy: dict | None = None,
    ):
        super().__init__()
        self.weights = {k: float(v) for k, v in dict(weights).items() if v is not None}
        unknown = sorted(set(self.weights) - set(TERMS))
        if unknown:
            raise DistillError(f"unknown loss term(s) {unknown}; choose from {list(TERMS)}")
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise DistillError(f"loss weights must be >= 0 and not all 0, got {self.weights}")
        if temperature <= 0:
            raise DistillError(f"loss.temperature must be > 0, got {temperature}")
        if tail not in TAIL_MODES:
            raise DistillError(f"loss.tail must be one of {list(TAIL_MODES)}, got {tail!r}")
        if not 0.0 <= beta <= 1.0:
            raise DistillError(f"loss.beta must be in [0, 1], got {beta}")
        self.temperature, self.beta, self.tail = temperature, beta, tail
        self.chunk_size, self.fused_linear = chunk_size, fused_linear
        self.hidden_spec, self.attention_spec = dict(hidden or {}), dict(attention or {})
        self.on_policy = OnPolicy(**on_policy) if on_policy else OnPolicy()
        self.hidden_loss: nn.Module | None = None
        self.attention_loss: nn.Module | None = None

    # -- what the models must return -------------------------------------------------
    def uses(self, term: str) -> bool:
        return self.weights.get(term, 0.0) > 0

    @property
    def distills_logits(self) -> bool:
        return any(self.uses(t) for t in LOGIT_TERMS if t != "ce")

    # Feature terms count as present even at weight 0, so a schedule can switch them on later.
    @property
    def needs_hidden_states(self) -> bool:
        return "hidden" in self.weights

    @property
    def needs_attentions(self) -> bool:
        return "attention" in self.weights

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> "Objective":
        """Build the representation terms for these models (projections sized to their widths)."""
        if (self.needs_hidden_states or self.needs_attentions) and teacher is None:
            raise DistillError("hidden-state and attention terms need a live teacher model (teacher=live)")
        s_cfg = student.config
        t_cfg = teacher.config if teacher is not None else None
        if self.needs_hidden_states:
            pairs = layer_pairs(self.hidden_spec.get("pairs", "auto"), t_cfg.num_hidden_layers, s_cfg.num_hidden_layers)
            self.hidden_loss = HiddenStateLoss(pairs, s_cfg.hidden_size, t_cfg.hidden_size,
                                               metric=self.hidden_spec.get("metric", "mse"))
        if self.needs_attentions:
            pairs = layer_pairs(self.attention_spec.get("pairs", "auto"), t_cfg.num_hidden_layers, s_cfg.num_hidden_layers)
            self.attention_loss = AttentionLoss(pairs)
        return self

    # -- the loss ----------------------------------------------------------------------
    def logit_weights(self, teacher: Outputs | None) -> dict[str, float]:
        if teacher is None:  # teacher-free training (the teacher itself, controls, black-box data): CE only
            return {"ce": 1.0}
        return {t: self.weights[t] for t in LOGIT_TERMS if self.uses(t)}

    def forward(self, student: Outputs, teacher: Outputs | None, labels: Tensor, mask: Tensor | None = None) -> dict:
        """Returns ``{"loss": total, term: detached value, ...}``; ``mask`` marks tokens to distill
        (default: tokens with a label), ``labels`` = -100 where CE must not look."""
        weights = self.logit_weights(teacher)
        loss, parts = self._logit_terms(student, teacher, labels, mask, weights) if weights else (None, {})
        if teacher is not None:
            token_mask = mask if mask is not None else labels != -100
            for name, term in (("hidden", self.hidden_loss), ("attention", self.attention_loss)):
                if term is None or not self.uses(name):
                    continue
                s_feats, t_feats = ((student.hidden_states, teacher.hidden_states) if name == "hidden"
                                    else (student.attentions, teacher.attentions))
                value = term(s_feats, t_feats, token_mask)
                loss = self.weights[name] * value if loss is None else loss + self.weights[name] * value
                parts[name] = value.detach()
        if student.router_aux is not None:  # keeps an MoE student's experts in use (Switch / Mixtral)
            loss = loss + student.router_aux
            parts["router_aux"] = student.router_aux.detach()
        return {"loss": loss, **parts}

    def _logit_terms(self, student, teacher, labels, mask, weights):
        t_logits = None if teacher is None else teacher.logits
        common = dict(weights=weights, temperature=self.temperature, beta=self.beta)
        if self.fused_linear:
            if isinstance(t_logits, SparseTeacher):
                raise DistillError("loss.fused_linear needs a live teacher; the cached top-k is already sparse")
            return fused_linear_loss(
                student.last_hidden, student.head_weight,
                None if teacher is None else teacher.last_hidden, None if teacher is None else teacher.head_weight,
                labels, mask, vocab_size=student.vocab_size, chunk_size=self.chunk_size,
                student_bias=student.head_bias, teacher_bias=None if teacher is None else teacher.head_bias, **common,
            )
        return chunked_logit_loss(student.logits, t_logits, labels, mask, tail=self.tail,
                                  chunk_size=self.chunk_size, **common)


def ce_only() -> Objective:
    """The objective of teacher-free training (a teacher from scratch, the control)."""
    return Objective(weights={"ce": 1.0})

