"""What one model produced for a batch, as the objective reads it (``distill.losses.objective``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from distill.teacher.outputs import SparseTeacher


@dataclass
class Outputs:
    """What one model produced for a batch; only what the objective asked for is filled."""

    logits: Tensor | SparseTeacher | None = None  # [B, T, V] (trimmed to the tokenizer) or the cache's top-k
    last_hidden: Tensor | None = None  # [B, T, H] final hidden state, for the fused LM-head loss
    head_weight: Tensor | None = None  # [V_rows, H] the LM head, for the fused loss and dual_space
    head_bias: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # HF output_hidden_states (embeddings first)
    attentions: tuple[Tensor, ...] | None = None  # HF output_attentions
    vocab_size: int | None = None  # tokens of the tokenizer: LM-head rows past it are padding
    router_aux: Tensor | None = None  # an MoE student's load-balancing loss, already × its router_aux_loss_coef
    # several teachers, teachers_mix=sum (distill.teacher.mixture): each one's outputs and its weight; the
    # distribution terms are computed against each and summed with the weights
    members: tuple[Outputs, ...] | None = None
    member_weights: tuple[float, ...] | None = None
    # a member that reads rows in its own tokenizer: their ``AlignedBatch`` to the student's rows
    aligned: object | None = None
