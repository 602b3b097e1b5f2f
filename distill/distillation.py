"""The LightningModule: receives a built student, an optional frozen teacher and a loss.

Without a teacher it is plain next-token training (CE only), the one code path that
trains a teacher from scratch, a from-scratch student and the control.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from distill.losses.kd import KDLoss
from distill.teacher.module import Teacher


class DistillationModule(L.LightningModule):
    def __init__(
        self,
        student: nn.Module,
        loss: KDLoss,
        vocab_size: int,
        teacher: Teacher | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        self.student, self.loss = student, loss
        # Not a registered child: the teacher stays out of state_dict (checkpoints),
        # out of parameters() (the optimizer) and out of .train(); _apply moves it along.
        object.__setattr__(self, "teacher", teacher)
        self.vocab_size = vocab_size
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.max_steps, self.min_lr_ratio = max_steps, min_lr_ratio

    def _apply(self, fn, *args, **kwargs):
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def student_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Embedding rows past the tokenizer (padding to a round size) are never targets.
        return self.student(input_ids=input_ids, use_cache=False).logits[..., : self.vocab_size]

    def teacher_logits(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        return self.teacher(input_ids)[..., : self.vocab_size]

    def training_step(self, batch, batch_idx):
        inputs, targets = batch[0], batch[1]
        terms = self.loss(self.student_logits(inputs), self.teacher_logits(inputs), targets)
        self.log("train/loss", terms["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch[0], batch[1]
        terms = self.loss(self.student_logits(inputs), self.teacher_logits(inputs), targets)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, prog_bar=False)

    def configure_optimizers(self):
        decay = [p for p in self.student.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.student.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, betas=(0.9, 0.95),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay to ``min_lr_ratio``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
