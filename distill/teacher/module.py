"""The frozen teacher.

It stays in eval mode with no gradients, is never handed to the optimizer, and its
forward always runs under ``no_grad``. The DistillationModule holds it outside its
registered children, so it is also absent from the student's checkpoints.
"""

from __future__ import annotations

import lightning as L
import torch
from transformers import PreTrainedModel

from distill.forward import model_outputs


class Teacher(L.LightningModule):
    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.freeze()  # eval() + requires_grad_(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # a teacher never leaves eval mode (no dropout)

    scores_new_tokens = True  # it can score any tokens, the student's own samples too (on-policy)

    @torch.no_grad()
    def scores(self, input_ids: torch.Tensor, rows: torch.Tensor | None, objective, vocab_size: int, position_ids=None):
        """What ``objective`` compares the student with on this batch (logits, or the final hidden
        state and LM head for the fused loss, plus hidden states / attention maps)."""
        return model_outputs(self.model, input_ids, vocab_size, objective, position_ids)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
