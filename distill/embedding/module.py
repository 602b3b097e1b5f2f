"""The LightningModule of embedding distillation: a frozen encoder teacher, a trainable student."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from distill.distillation import DistillationModule
from distill.embedding.losses import EmbeddingObjective
from distill.embedding.pooling import Pooling, sentence_embeddings


class EmbeddingDistillModule(L.LightningModule):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: EmbeddingObjective,
        pooling: Pooling,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        self.student, self.loss, self.pooling = student, loss, pooling
        # As in DistillationModule: not a registered child, so the teacher stays out of checkpoints,
        # the optimizer and .train(); _apply still moves it with the module.
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.max_steps, self.min_lr_ratio = max_steps, min_lr_ratio

    def _apply(self, fn, *args, **kwargs):
        self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def training_step(self, batch, batch_idx):
        ids, mask = batch
        hidden = self.loss.needs_hidden_states
        with torch.no_grad():
            t_emb, t_hidden = sentence_embeddings(self.teacher, ids, mask, self.pooling, hidden)
        s_emb, s_hidden = sentence_embeddings(self.student, ids, mask, self.pooling, hidden)
        terms = self.loss(s_emb, t_emb, s_hidden, t_hidden, mask)
        self.log("train/loss", terms["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        ids, mask = batch
        t_emb, _ = sentence_embeddings(self.teacher, ids, mask, self.pooling)
        s_emb, _ = sentence_embeddings(self.student, ids, mask, self.pooling)
        self.log("val/embed_cosine", torch.cosine_similarity(s_emb, t_emb, dim=-1).mean())

    # The optimizer and schedule of the causal path (AdamW, no decay on norms and biases, linear
    # warm-up then cosine to min_lr_ratio): the same attributes, so the same methods.
    configure_optimizers = DistillationModule.configure_optimizers
    # and its clipping: Lightning's refuses the fused AdamW under bf16 autocast (see there)
    configure_gradient_clipping = DistillationModule.configure_gradient_clipping
    _lr_factor = DistillationModule._lr_factor
