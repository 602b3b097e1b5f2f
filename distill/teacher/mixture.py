"""Several teachers behind the one ``scores(...)`` interface the training module queries.

``teachers=[...]`` (``distill.run.teachers``) gives two or more scorers, each a live ``Teacher`` or a
``CachedTeacher``, with weights (normalized to sum to 1). ``teachers_mix`` says what the loss compares
the student with:

- ``mixture`` (default): one target, the weighted mixture of the teachers' distributions
  (``distill.losses.mixture``: exact for live teachers, on the union of the top-k supports when one
  is cached; a live teacher beside a cache is cut to the cache's top-k first). Every divergence term
  then compares the student with that one distribution.
- ``sum``: each output-distribution term is computed against each teacher and the results are summed
  with the weights (``Objective`` reads ``Outputs.members``); per-teacher values are logged as
  ``train/<term>.teacher<i>``. For forward KL on live teachers the two train alike:
  Σ w_i KL(p_i‖q) = KL(p_mix‖q) + Σ w_i KL(p_i‖p_mix), a constant, so the gradient is the same
  (q − p_mix) and only the logged value differs. For reverse KL, JSD or TVD they differ: the sum asks
  the student to be close to each teacher (reverse KL's minimiser is the normalized geometric mean
  Π p_i^w_i: mode-seeking, the tokens all teachers like), the mixture to one blended target (mass on
  every token any teacher likes). With cached teachers each term compares on that teacher's own
  top-k and tail, the mixture on the union of supports.

Hidden-state and attention terms pair the student with one teacher, ``paired`` (``loss.hidden.teacher``):
only that teacher returns its internals; the others return logits alone. Under ``mixture`` teachers of
weight 0 are not run (the paired one always is).

Teachers with tokenizers of their own (``distill.data.cross``: a student with its own tokenizer, or
teachers that differ) each read the rows of their tokenizer: ``read_feeds`` says which (``"student"``:
the student's rows, ``"teacher"``: the first teacher's, ``j``: view ``j``), and each member's outputs
carry the alignment of its rows to the student's (``Outputs.aligned``; none on the student's rows), so
the objective compares each on its own (``teachers_mix=sum``; a mixture needs one vocabulary).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from distill.errors import DistillError
from distill.losses.mixture import as_logits, mixture_logprobs, normalized, sparse_mixture, top_k_of
from distill.losses.objective import Outputs
from distill.teacher.outputs import SparseTeacher

MIXES = ("mixture", "sum")
DEFAULT_TOP_K = 64  # a live teacher cut to top-k beside cached ones, when no cache says its k


class MixtureTeacher(nn.Module):
    def __init__(self, scorers: list, weights: list[float], mix: str = "mixture", paired: int = 0):
        super().__init__()
        self.scorers = list(scorers)
        # live teachers as registered children: ``DistillationModule._apply`` moves this module, and them with it
        self.live = nn.ModuleList([s for s in scorers if isinstance(s, nn.Module)])
        self.weights, self.mix, self.paired = normalized(weights), mix, paired
        self.reads: list | None = None  # which rows each teacher reads (``read_feeds``); None: all the batch's
        self.vocab_sizes: list[int] | None = None
        if mix == "mixture":
            refuse_sampled_in_mixture(self.scorers)

    def read_feeds(self, reads: list, vocab_sizes: list[int]) -> MixtureTeacher:
        """Teacher ``i`` reads the rows ``reads[i]`` names (see the module's doc) in its vocabulary of
        ``vocab_sizes[i]`` tokens."""
        if self.mix == "mixture" and len(set(reads)) > 1:
            raise DistillError(
                "teachers_mix=mixture mixes distributions over one vocabulary, but these teachers tokenize differently "
                f"({reads}): use teachers_mix=sum (each teacher aligned with the student on its own)"
            )
        self.reads, self.vocab_sizes = list(reads), list(vocab_sizes)
        return self

    def train(self, mode: bool = True) -> MixtureTeacher:
        return super().train(False)  # teachers never leave eval mode

    @property
    def scores_new_tokens(self) -> bool:
        """On-policy: every teacher must score the student's samples (a cache cannot)."""
        return all(s.scores_new_tokens for s in self.scorers)

    @property
    def top_k(self) -> int:
        """The k a live teacher is cut to beside cached ones: the largest cache's."""
        return max((s.top_k for s in self.scorers if hasattr(s, "top_k")), default=DEFAULT_TOP_K)

    def running(self) -> list[int]:
        """The teachers run on a batch: all under ``sum`` (its per-teacher values keep their indices)."""
        return [i for i, w in enumerate(self.weights) if w > 0 or i == self.paired or self.mix == "sum"]

    @torch.no_grad()
    def scores(self, input_ids, rows, objective, vocab_size: int, position_ids=None, feeds=None) -> Outputs:
        """``feeds``: ``{"student" | "teacher" | j: (inputs, AlignedBatch or None)}``, the rows each
        teacher may read (``read_feeds``); without it every teacher reads ``input_ids``."""
        outs = {i: self._fed(i, input_ids, rows, objective, vocab_size, position_ids, feeds) for i in self.running()}
        paired = outs[self.paired]
        internals = dict(hidden_states=paired.hidden_states, attentions=paired.attentions, vocab_size=vocab_size)
        if self.mix == "sum":
            return Outputs(members=tuple(outs.values()), member_weights=tuple(self.weights), **internals)
        scored = [i for i in outs if self.weights[i] > 0]
        logits = [outs[i].logits for i in scored]
        weights = [self.weights[i] for i in scored]
        if any(isinstance(t, SparseTeacher) for t in logits):
            k = self.top_k
            sparse = [t if isinstance(t, SparseTeacher) else top_k_of(t, k) for t in logits]
            return Outputs(logits=sparse_mixture(sparse, weights), **internals)
        mixed = mixture_logprobs(logits, weights, objective.temperature)
        return Outputs(logits=as_logits(mixed, objective.temperature), **internals)

    def _fed(self, i: int, input_ids, rows, objective, vocab_size, position_ids, feeds) -> Outputs:
        if feeds is None or self.reads is None:
            return self._member(i, input_ids, rows, objective, vocab_size, position_ids)
        ids, aligned = feeds[self.reads[i]]
        positions = position_ids if self.reads[i] == "student" else None
        out = self._member(i, ids, rows, objective, self.vocab_sizes[i], positions)
        out.aligned = aligned if self.reads[i] != "student" else None
        return out

    def _member(self, i: int, input_ids, rows, objective, vocab_size, position_ids) -> Outputs:
        """Teacher ``i``'s outputs: the objective's full request for the paired teacher, logits for the others."""
        asked = objective if i == self.paired else _logits_only(objective)
        return self.scorers[i].scores(input_ids, rows, asked, vocab_size, position_ids)


def refuse_sampled_in_mixture(scorers: list) -> None:
    """A sampled cache's slots are draws, not its top-k: the union's cut to the K most probable tokens would
    move draws into the tail and bias the estimate. Under ``sum`` each teacher's terms run on its own
    support, so a sampled cache stays the unbiased estimate it is alone."""
    for i, scorer in enumerate(scorers):
        if getattr(getattr(scorer, "cache", None), "sampled", False):
            raise DistillError(
                f"teachers[{i}] is a sampled cache (teacher.cache_mode=sample), which teachers_mix=mixture does not "
                "read (its draws would be cut to the union's top-k): use teachers_mix=sum, or write it with "
                "teacher.cache_mode=topk"
            )


def _logits_only(objective) -> SimpleNamespace:
    """What ``model_outputs`` reads of an objective, asking for no hidden states or attention maps; the terms
    and temperature stay, for a sampled cache's check of the objective (``distill.teacher.sampled``)."""
    return SimpleNamespace(
        needs_hidden_states=False,
        needs_attentions=False,
        needs_heads=False,
        fused_linear=objective.fused_linear,
        weights=objective.weights,
        temperature=objective.temperature,
        beta=getattr(objective, "beta", 0.0),
    )
