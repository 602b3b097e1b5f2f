"""One forward of a Hugging Face causal LM for what an objective needs (student and live teacher alike)."""

from __future__ import annotations

import torch
from torch import nn

from distill.losses.objective import Objective, Outputs
from distill.student.lora import backbone


def model_outputs(
    model: nn.Module,
    input_ids: torch.Tensor,
    vocab_size: int,
    objective: Objective,
    position_ids: torch.Tensor | None = None,
) -> Outputs:
    """Run an HF causal LM for what ``objective`` needs: logits, or the final hidden state and
    LM head (fused loss, no logits ever built), plus hidden states / attention maps.
    ``position_ids`` that restart inside a row mark packed sequences: transformers then isolates
    their attention (no attention mask is passed, so it reads the packing from the positions)."""
    extra = dict(
        output_hidden_states=objective.needs_hidden_states,
        output_attentions=objective.needs_attentions,
        use_cache=False,
    )
    if position_ids is not None:  # only then: a plain causal LM wrapper need not accept the argument
        extra["position_ids"] = position_ids
    if objective.fused_linear:
        out = backbone(model)(input_ids=input_ids, **extra)
        head = model.get_output_embeddings()
        return Outputs(
            last_hidden=out.last_hidden_state,
            head_weight=head.weight,
            head_bias=head.bias,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            vocab_size=vocab_size,
        )
    moe = model.training and hasattr(model.config, "router_aux_loss_coef")  # a mixture-of-experts student
    if moe:
        extra["output_router_logits"] = True
    out = model(input_ids=input_ids, **extra)
    # Embedding rows past the tokenizer (padding to a round size) are never targets.
    return Outputs(
        logits=out.logits[..., :vocab_size],
        head_weight=model.get_output_embeddings().weight if objective.needs_heads else None,
        hidden_states=out.hidden_states,
        attentions=out.attentions,
        vocab_size=vocab_size,
        router_aux=out.aux_loss * model.config.router_aux_loss_coef if moe else None,
    )
