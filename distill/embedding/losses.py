"""The embedding-distillation objective: sentence-embedding and hidden-state terms.

Pure tensor functions plus one module that weights them. The hidden-state term is the causal
path's own (``distill.losses.representation``: layer pairs, MSE/cosine, padding masked, a
learned projection when widths differ); only the sentence-level terms are new here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.representation import HiddenStateLoss, layer_pairs

TERMS = ("cosine", "hidden", "similarity")


def embedding_cosine(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Mean over sentences of ``1 − cos(student, teacher)``: the direction is what retrieval uses."""
    if student_emb.shape != teacher_emb.shape:
        raise DistillError(
            f"embedding shapes differ: student {tuple(student_emb.shape)}, teacher {tuple(teacher_emb.shape)}"
        )
    return (1.0 - F.cosine_similarity(student_emb.float(), teacher_emb.float(), dim=-1)).mean()


def similarity_mse(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """MSE between the in-batch cosine-similarity matrices (relational KD, Park et al. 2019):
    the student learns how sentences relate to each other, which is what neighbours are made of."""
    s = F.normalize(student_emb.float(), dim=-1)
    t = F.normalize(teacher_emb.float(), dim=-1)
    return (s @ s.T - t @ t.T).pow(2).mean()


class EmbeddingObjective(nn.Module):
    """``Σ weight · term`` over ``cosine`` (sentence embeddings), ``hidden`` (mapped hidden states)
    and ``similarity`` (in-batch similarity matrices). ``weights`` stays a plain dict so loss
    schedules can change it while training, as for the causal objective."""

    def __init__(self, weights: Mapping[str, float], hidden: Mapping | None = None):
        super().__init__()
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise DistillError(f"unknown embedding loss term(s) {sorted(unknown)}: choose from {list(TERMS)}")
        self.weights = {k: float(v) for k, v in weights.items()}
        if not any(self.weights.values()):
            raise DistillError("every embedding loss weight is 0: nothing to train on")
        self.hidden_spec = dict(hidden or {})
        self.hidden_loss: HiddenStateLoss | None = None

    @property
    def needs_hidden_states(self) -> bool:
        return self.weights.get("hidden", 0) > 0

    def bind(self, student, teacher) -> None:
        """Resolve the layer pairs (and projections) from the two models' configs."""
        if not self.needs_hidden_states:
            return
        s, t = student.config, teacher.config
        pairs = layer_pairs(self.hidden_spec.get("pairs", "auto"), t.num_hidden_layers, s.num_hidden_layers)
        self.hidden_loss = HiddenStateLoss(pairs, s.hidden_size, t.hidden_size, self.hidden_spec.get("metric", "mse"))

    def forward(
        self,
        student_emb: Tensor,
        teacher_emb: Tensor,
        student_hidden=None,
        teacher_hidden=None,
        mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        terms = {}
        if self.weights.get("cosine", 0) > 0:
            terms["cosine"] = embedding_cosine(student_emb, teacher_emb)
        if self.weights.get("similarity", 0) > 0:
            terms["similarity"] = similarity_mse(student_emb, teacher_emb)
        if self.needs_hidden_states:
            if self.hidden_loss is None:
                raise DistillError("the hidden-state term needs bind(student, teacher) before training")
            terms["hidden"] = self.hidden_loss(student_hidden, teacher_hidden, mask)
        terms["loss"] = sum(self.weights[k] * v for k, v in terms.items())
        return terms
