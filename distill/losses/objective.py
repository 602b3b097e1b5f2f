"""The training objective: weighted loss terms, chosen and weighted in ``configs/loss/``.

Terms on the output distribution (``forward_kl``, ``reverse_kl``, ``jsd``, ``tvd``, ``ce``)
go through one memory-bounded engine: chunked over tokens on logits, or fused with the
LM head (``fused_linear: true``) so no [tokens × vocab] logits exist at all. Terms on
internal representations (``hidden``, ``attention``) are small modules bound to the
models' shapes by ``bind``; their projections train with the student but live here, not in
the student, so they are never exported. Terms across vocabularies (``uld``, ``gold``, ``projected_kl``: a student with its own
tokenizer) compare the two distributions per aligned span of text (``distill.losses.cross_vocab``),
on the ``AlignedBatch`` the cross-tokenizer data gives each batch (``distill.data.cross``).

What each term is and needs comes from the registry (``distill.losses.terms``); every setting
is validated once, here, when the objective is built (``distill.losses.spec``). Weights and the
temperature are plain attributes so loss-schedule callbacks can change them between steps.
"""

from __future__ import annotations

from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.compiled import COMPILE_FROM_VOCAB, chunk_kernel
from distill.losses.cross_vocab import TERMS as SPAN_TERMS
from distill.losses.cross_vocab import cross_vocab_loss
from distill.losses.divergences import chunked_logit_loss
from distill.losses.dual_space import DualSpace
from distill.losses.fused_linear import fused_chunk, fused_linear_loss
from distill.losses.likelihood import WordBreaks
from distill.losses.outputs import Outputs
from distill.losses.representation import AttentionLoss, HiddenStateLoss, layer_pairs
from distill.losses.spec import OnPolicy, loss_spec
from distill.losses.terms import (
    ALIGNED_TERMS,
    ATTENTIONS,
    DISTRIBUTION_TERMS,
    DIVERGENCES,
    HIDDEN_STATES,
    REGISTRY,
    REPRESENTATION,
    TERMS,
)
from distill.teacher.outputs import SparseTeacher

__all__ = ["TERMS", "Objective", "OnPolicy", "Outputs", "ce_only"]


class Objective(nn.Module):
    """Arguments as in ``configs/loss/forward_kl.yaml``; all are validated here, once (``loss_spec``)."""

    def __init__(
        self,
        weights: dict[str, float],
        temperature: float = 1.0,
        beta: float = 0.5,
        tail: str = "bucket",
        chunk_size: int = 256,
        fused_linear: bool = False,
        compile: bool | str = "auto",
        hidden: dict | None = None,
        attention: dict | None = None,
        on_policy: dict | None = None,
        gold: dict | None = None,
        alm: dict | None = None,
        prefix_kl: dict | None = None,
        dual_space: dict | None = None,
    ):
        super().__init__()
        spec = loss_spec(
            weights,
            temperature=temperature,
            beta=beta,
            tail=tail,
            chunk_size=chunk_size,
            fused_linear=fused_linear,
            compile=compile,
            hidden=hidden,
            attention=attention,
            on_policy=on_policy,
            gold=gold,
            alm=alm,
            prefix_kl=prefix_kl,
            dual_space=dual_space,
        )
        self.weights = dict(spec.weights)  # loss schedules change weights and temperature between steps
        self.temperature, self.beta, self.tail = spec.temperature, spec.beta, spec.tail
        self.chunk_size, self.fused_linear, self.compile = spec.chunk_size, spec.fused_linear, spec.compile
        self.hidden_spec, self.attention_spec = spec.hidden, spec.attention
        self.on_policy: OnPolicy = spec.on_policy
        self.gold_spec, self.alm_spec, self.prefix_spec = spec.gold, spec.alm, spec.prefix_kl
        self.dual_space_spec = spec.dual_space
        self.hidden_loss: nn.Module | None = None
        self.dual_space: nn.Module | None = None  # DSKD's projections (``bind``)
        self.attention_loss: nn.Module | None = None
        self.mapping = None  # GOLD's shared tokens of the two vocabularies (``bind_vocabularies``)
        self.member_mappings: list = []  # several teachers: each one's with the student (``bind_vocabularies``)
        self.breaks = None  # ALM's word chunks: the two vocabularies' space flags (``bind_vocabularies``)
        self.member_breaks: list = []
        if self.fused_linear and self.aligned_terms:
            raise DistillError(
                f"loss.fused_linear cannot serve loss.weights.{self.aligned_terms[0]}: cross-vocabulary terms read "
                "both models' logits per aligned span (chunked, never fused); set loss.fused_linear=false"
            )

    # -- which terms run ---------------------------------------------------------------
    def uses(self, term: str) -> bool:
        return self.weights.get(term, 0.0) > 0

    @property
    def active_terms(self) -> tuple[str, ...]:
        """The terms with a weight > 0, in registry order (with a teacher; without one, CE only)."""
        return tuple(term for term in TERMS if self.uses(term))

    def wired(self, term: str) -> bool:
        """The models must produce this term's inputs. Representation terms count even at weight 0,
        so a loss schedule can switch them on later (their projections must exist from the start)."""
        if REGISTRY[term].compares == REPRESENTATION:
            return term in self.weights
        return self.uses(term)

    @property
    def distills_logits(self) -> bool:
        return any(self.uses(term) for term in (*DIVERGENCES, *ALIGNED_TERMS))

    @property
    def aligned_terms(self) -> tuple[str, ...]:
        """The active cross-vocabulary terms (a student with its own tokenizer)."""
        return tuple(term for term in ALIGNED_TERMS if self.uses(term))

    @property
    def span_terms(self) -> tuple[str, ...]:
        """The active terms on both output distributions per span (``distill.losses.cross_vocab``)."""
        return tuple(term for term in self.aligned_terms if term in SPAN_TERMS)

    @property
    def needs_heads(self) -> bool:
        """Both models must hand over their LM heads (``dual_space`` reads each model's with the other's state)."""
        return self.uses("dual_space")

    @property
    def needs_hidden_states(self) -> bool:
        return any(self.wired(term) and REGISTRY[term].needs == HIDDEN_STATES for term in TERMS)

    @property
    def needs_attentions(self) -> bool:
        return any(self.wired(term) and REGISTRY[term].needs == ATTENTIONS for term in TERMS)

    # -- what the run must provide -----------------------------------------------------
    def needs_teacher(self) -> list[str]:
        """The terms that compare with a teacher (without one, the objective trains on CE alone)."""
        return [term for term in TERMS if self.wired(term) and REGISTRY[term].needs_teacher]

    def needs_live_teacher(self) -> list[str]:
        """Why a teacher cache (top-k log-probabilities only) cannot serve this objective; empty if it can."""
        reasons = []
        if self.on_policy.lmbda > 0:
            reasons.append("on-policy sampling (loss.on_policy.lmbda > 0)")
        reasons += self._on_internals()
        if self.fused_linear:  # the fused loss projects the teacher's last hidden state through its LM head
            reasons.append("the fused LM-head loss (loss.fused_linear)")
        return reasons

    def _on_internals(self) -> list[str]:
        """The wired terms on the teacher's hidden states or attention maps, as messages name them."""
        return [
            f"{REGISTRY[term].title} (loss.weights.{term})"
            for term in TERMS
            if self.wired(term) and REGISTRY[term].live_teacher_only
        ]

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> Objective:
        """Build the representation terms for these models (projections sized to their widths)."""
        if teacher is None:
            if self._on_internals():
                raise DistillError(f"{self._on_internals()[0]} needs a live teacher model (teacher=live)")
            return self
        s_cfg, t_cfg = student.config, teacher.config
        if self.needs_hidden_states:
            pairs = layer_pairs(self.hidden_spec["pairs"], t_cfg.num_hidden_layers, s_cfg.num_hidden_layers)
            self.hidden_loss = HiddenStateLoss(
                pairs, s_cfg.hidden_size, t_cfg.hidden_size, metric=self.hidden_spec["metric"]
            )
        if self.needs_attentions:
            pairs = layer_pairs(self.attention_spec["pairs"], t_cfg.num_hidden_layers, s_cfg.num_hidden_layers)
            self.attention_loss = AttentionLoss(pairs)
        if self.wired("dual_space"):
            self.dual_space = DualSpace(s_cfg.hidden_size, t_cfg.hidden_size, self.dual_space_spec["spaces"])
        return self

    def bind_vocabularies(self, teacher_tokenizer, student_tokenizer, members: list | None = None) -> Objective:
        """The mapping of the tokens whose strings both vocabularies hold, and of each teacher token to
        the student token its text begins with (built once; read by ``gold`` and ``projected_kl``).
        ``members``: several teachers' tokenizers, a mapping for each (none where it is the student's)."""
        if self.uses("gold") or self.uses("projected_kl") or self.uses("prefix_kl"):
            from distill.align.vocab import vocab_mapping

            self.mapping, self.member_mappings = _per_teacher(
                lambda t: vocab_mapping(
                    t, student_tokenizer, projection=self.uses("projected_kl"), prefixes=self.uses("prefix_kl")
                ),
                teacher_tokenizer,
                student_tokenizer,
                members,
            )
        if self.uses("alm") and self.alm_spec["chunks"] == "words":
            self.breaks, self.member_breaks = _per_teacher(
                lambda t: WordBreaks.of(t, student_tokenizer), teacher_tokenizer, student_tokenizer, members
            )
        return self

    # -- the loss ----------------------------------------------------------------------
    def logit_weights(self, teacher: Outputs | None) -> dict[str, float]:
        if teacher is None:  # teacher-free training (the teacher itself, controls, black-box data): CE only
            return {"ce": 1.0}
        return {t: self.weights[t] for t in DISTRIBUTION_TERMS if self.uses(t)}

    def forward(
        self, student: Outputs, teacher: Outputs | None, labels: Tensor, mask: Tensor | None = None, aligned=None
    ) -> dict:
        """Returns ``{"loss": total, term: detached value, ...}``; ``mask`` marks tokens to distill
        (default: tokens with a label), ``labels`` = -100 where CE must not look. ``aligned``: the
        batch's ``AlignedBatch`` (teacher and student rows of the same text), for ``uld`` / ``gold`` / ``projected_kl``."""
        weights = self.logit_weights(teacher)
        if teacher is not None and teacher.members:
            loss, parts = self._per_teacher_terms(student, teacher, labels, mask, weights)
        else:
            loss, parts = self._logit_terms(student, teacher, labels, mask, weights) if weights else (None, {})
        if teacher is not None and self.span_terms and not teacher.members:
            value, terms = self._aligned_terms(student, teacher, aligned, labels=labels)
            loss = value if loss is None else loss + value
            parts.update(terms)
        if teacher is not None and self.dual_space is not None and self.uses("dual_space"):
            value, terms = self.dual_space(
                student, teacher, self._alignment(aligned), self.temperature, self.chunk_size
            )
            loss = self.weights["dual_space"] * value if loss is None else loss + self.weights["dual_space"] * value
            parts.update({"dual_space": value.detach(), **terms})
        if teacher is not None:
            token_mask = mask if mask is not None else labels != -100
            for name, module in (("hidden", self.hidden_loss), ("attention", self.attention_loss)):
                if module is None or not self.uses(name):
                    continue
                field = REGISTRY[name].needs  # the Outputs field both models filled for it
                value = module(getattr(student, field), getattr(teacher, field), token_mask)
                loss = self.weights[name] * value if loss is None else loss + self.weights[name] * value
                parts[name] = value.detach()
        if student.router_aux is not None:  # keeps an MoE student's experts in use (Switch / Mixtral)
            loss = loss + student.router_aux
            parts["router_aux"] = student.router_aux.detach()
        return {"loss": loss, **parts}

    def _per_teacher_terms(self, student: Outputs, teacher: Outputs, labels, mask, weights):
        """``teachers_mix=sum``: Σ_i w_i · (the terms against teacher i), CE once; each teacher's values are
        also reported as ``<term>.teacher<i>``. A teacher on the student's tokens gets the divergence terms,
        one on rows of its own tokenizer (``Outputs.aligned``) the cross-vocabulary terms, on its alignment."""
        divergences = {term: w for term, w in weights.items() if term in DIVERGENCES}
        rest = {term: w for term, w in weights.items() if term not in DIVERGENCES}
        loss, parts = self._logit_terms(student, None, labels, mask, rest) if rest else (None, {})
        for i, (member, share) in enumerate(zip(teacher.members, teacher.member_weights)):
            if member.aligned is not None:
                mapping = self.member_mappings[i] if self.member_mappings else self.mapping
                breaks = self.member_breaks[i] if self.member_breaks else self.breaks
                value, terms = self._aligned_terms(student, member, member.aligned, mapping, breaks)
            elif divergences:
                value, terms = self._logit_terms(student, member, labels, mask, divergences)
            else:
                continue
            loss = share * value if loss is None else loss + share * value
            for term, v in terms.items():
                parts[term] = parts.get(term, 0.0) + share * v
                parts[f"{term}.teacher{i}"] = v
        return loss, parts

    def _aligned_terms(
        self, student: Outputs, teacher: Outputs, aligned, mapping=None, breaks=None, labels=None
    ) -> tuple[Tensor, dict]:
        return cross_vocab_loss(
            student.logits,
            teacher.logits,
            self._alignment(aligned),
            weights={t: self.weights[t] for t in self.span_terms},
            temperature=self.temperature,
            mapping=self.mapping if mapping is None else mapping,
            matched_weight=self.gold_spec["matched_weight"],
            gold_spans=self.gold_spec["spans"],
            alm_breaks=self.breaks if breaks is None else breaks,
            alm_binarization=self.alm_spec["binarization"],
            prefix_cuts=self.prefix_spec["cuts"],
            prefix_within=self.prefix_spec["within"],
            prefix_within_rows=self.prefix_spec["within_rows"],
            prefix_uncovered_ce=self.prefix_spec["uncovered_ce"],
            labels=labels,
            chunk_size=self.chunk_size,
            teacher_vocab_size=teacher.vocab_size,
        )

    def _alignment(self, aligned):
        if aligned is None:
            raise DistillError(
                f"loss.weights.{self.aligned_terms[0]} compares two vocabularies on aligned text, but the batch has "
                "no alignment: give the student its own tokenizer (student.tokenizer=<dir> or student.vocab_size=N)"
            )
        return aligned

    def _logit_terms(self, student, teacher, labels, mask, weights):
        if not any(term in DIVERGENCES for term in weights):
            teacher = None  # CE alone reads the labels (beside cross-vocabulary terms, whose teacher differs)
        t_logits = None if teacher is None else teacher.logits
        common = dict(weights=weights, temperature=self.temperature, beta=self.beta, kernel=self._kernel(student))
        if self.fused_linear:
            cached = isinstance(t_logits, SparseTeacher)  # the cache's top-k: no teacher head to run
            live = teacher is not None and not cached
            return fused_linear_loss(
                student.last_hidden,
                student.head_weight,
                teacher.last_hidden if live else None,
                teacher.head_weight if live else None,
                labels,
                mask,
                vocab_size=student.vocab_size,
                chunk_size=fused_chunk(self.chunk_size, student.last_hidden.shape[-1]),
                student_bias=student.head_bias,
                teacher_bias=teacher.head_bias if live else None,
                teacher_topk=t_logits if cached else None,
                tail=self.tail,
                **common,
            )
        return chunked_logit_loss(
            student.logits, t_logits, labels, mask, tail=self.tail, chunk_size=self.chunk_size, **common
        )

    def _kernel(self, student: Outputs):
        """The compiled chunk kernels (``loss.compile``): always with ``true``; with ``auto`` from
        ``COMPILE_FROM_VOCAB`` tokens up, where the loss's passes over ``[chunk × vocab]`` start to
        cost as much as the LM head (below, eager is within a few % of the floor and a compile would
        only add its seconds at startup)."""
        if self.compile != "auto":
            return chunk_kernel if self.compile else None
        vocab = student.vocab_size
        if vocab is None:  # Outputs built without it: the logits' last dimension, or the LM head's rows
            vocab = student.logits.shape[-1] if student.logits is not None else student.head_weight.shape[0]
        return chunk_kernel if vocab >= COMPILE_FROM_VOCAB else None


def _per_teacher(build, teacher_tokenizer, student_tokenizer, members) -> tuple:
    """(``build(teacher_tokenizer)``, one for each of several teachers' tokenizers: the first's again for
    the first teacher's, None for a teacher that reads the student's tokens), built once per tokenizer."""
    first = build(teacher_tokenizer)
    each = [first if t is teacher_tokenizer else None if t is student_tokenizer else build(t) for t in members or []]
    return first, each


def ce_only() -> Objective:
    """The objective of teacher-free training (a teacher from scratch, the control)."""
    return Objective(weights={"ce": 1.0})
