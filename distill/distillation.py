"""The LightningModule: receives a built student, an optional teacher backend and an objective.

Without a teacher it is plain next-token training (CE only), the one code path that
trains a teacher from scratch, a from-scratch student and the control. The teacher is
either live (a frozen ``Teacher`` run on each batch) or an offline top-k cache looked up
by the batch's packed-row index; both answer ``scores(...)`` with the same ``Outputs``, so
neither this module nor the objective asks which kind it holds.
"""

from __future__ import annotations

import math
import random

import lightning as L
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from distill import on_policy
from distill.errors import DistillError
from distill.forward import model_outputs
from distill.losses.objective import Objective, Outputs


class NonFiniteGuard:
    """Counts steps skipped for a NaN/Inf loss or gradient; stops the run after ``max_bad`` in a row
    (the weights were never updated by them, and the last checkpoint is left as it was)."""

    def __init__(self, max_bad: int):
        self.max_bad, self.skipped, self.in_a_row = max_bad, 0, 0

    def bad(self, step: int, what: str, trainer=None) -> None:
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_bad:
            ckpt = getattr(getattr(trainer, "checkpoint_callback", None), "last_model_path", "") or "none saved yet"
            raise DistillError(
                f"{self.in_a_row} steps in a row had a non-finite {what} (last at step {step}, "
                f"{self.skipped} skipped in all): stopping; last good checkpoint: {ckpt}"
            )

    def good(self) -> None:
        self.in_a_row = 0


def adamw(groups, fused: bool = True, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel for these parameters (CPU and CUDA tensors). PyTorch's
    default on CPU is a loop of separate ops per parameter; at a 32k vocabulary that step took 2.1 s
    of CPU time for 41M parameters, fused 0.29 s (issue 22). Same update rule; sharded (DTensor) or
    other parameters fall back to the default implementation, as does ``fused=False`` (fp16's grad
    scaler: a fused optimizer unscales inside its step, after Lightning would have clipped)."""
    params = [p for group in groups for p in group["params"]]
    if fused and params and all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # a dtype the fused kernel lacks (e.g. fp16 on CPU)
            pass
    return torch.optim.AdamW(groups, **kwargs)


class DistillationModule(L.LightningModule):
    def __init__(
        self,
        student: nn.Module,
        loss: Objective,
        vocab_size: int,
        teacher=None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
        max_bad_steps: int = 10,
        pad_id: int = 0,
        stop_ids: tuple[int, ...] = (),
        teacher_vocab_size: int | None = None,
        aligner=None,
    ):
        super().__init__()
        self.student, self.loss = student, loss
        # Not a registered child: the teacher stays out of state_dict (checkpoints),
        # out of parameters() (the optimizer) and out of .train(); _apply moves it along.
        object.__setattr__(self, "teacher", teacher)
        self.vocab_size = vocab_size
        # a student with its own tokenizer (cross-tokenizer data): the teacher predicts its own vocabulary
        self.teacher_vocab_size = teacher_vocab_size or vocab_size
        self.aligner = aligner  # its tokenizer and the teacher's (align/encode.py): re-tokenizes on-policy samples
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.max_steps, self.min_lr_ratio = max_steps, min_lr_ratio
        self._coin = random.Random(seed)  # on-policy batch choice: reproducible, independent of torch's RNG
        self.guard = NonFiniteGuard(max_bad_steps)
        # on-policy answers to real prompts: pad with, and stop at, the tokenizer's own ids
        self.pad_id, self.stop_ids = pad_id, tuple(stop_ids)

    def _apply(self, fn, *args, **kwargs):
        if isinstance(self.teacher, nn.Module):
            self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def configure_model(self) -> None:
        """Under FSDP2 (``trainer=fsdp``, Lightning's ModelParallelStrategy) shard the student, and
        the teacher if the strategy says so (``distill/sharding.py``); a no-op otherwise."""
        if self.device_mesh is not None:
            from distill.sharding import shard_distillation_module

            shard_distillation_module(self, self.device_mesh, getattr(self.trainer.strategy, "shard_teacher", False))

    @property
    def scores_new_tokens(self) -> bool:
        """The teacher can score tokens the student sampled (on-policy); a cache knows only its rows."""
        return self.teacher is not None and self.teacher.scores_new_tokens

    def student_outputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> Outputs:
        return model_outputs(self.student, input_ids, self.vocab_size, self.loss, position_ids)

    def teacher_outputs(self, input_ids, rows, position_ids=None, feeds=None) -> Outputs | None:
        """``feeds``: several teachers reading rows of their own tokenizers (``MixtureTeacher.read_feeds``)."""
        if self.teacher is None:
            return None
        more = {} if feeds is None else {"feeds": feeds}
        return self.teacher.scores(input_ids, rows, self.loss, self.teacher_vocab_size, position_ids, **more)

    def training_step(self, batch, batch_idx):
        # (inputs, targets, row index[, extras]): extras from conversations (data/chat/datamodule.py) or a
        # student with its own tokenizer (data/cross.py: the teacher's row of the same text, and the alignment)
        inputs, targets = batch[0], batch[1]
        rows = batch[2] if len(batch) > 2 else None
        extras = batch[3] if len(batch) > 3 else {}
        positions, mask = extras.get("position_ids"), None
        teacher_inputs, aligned = extras.get("teacher_inputs"), extras.get("aligned")
        sampled = (
            self.scores_new_tokens and self.loss.on_policy.lmbda > 0 and self._coin.random() < self.loss.on_policy.lmbda
        )
        if sampled:
            inputs, targets, mask = self.sample_from_student(inputs, extras.get("prompt_len"))
            positions = None  # sampled rows hold one sequence each (packing with on-policy is refused)
            if self.aligner is not None:  # the teacher reads what the student wrote, in its own tokens
                teacher_inputs, aligned = on_policy.realign(self.aligner, inputs, mask)
        student = self.student_outputs(inputs, positions)
        feeds = None
        if getattr(self.teacher, "reads", None):  # several teachers, each on its own tokenizer's rows
            feeds = {
                "student": (inputs, None),
                "teacher": (teacher_inputs, aligned),
                **dict(enumerate(extras.get("views", []))),
            }
        teacher = self.teacher_outputs(inputs if teacher_inputs is None else teacher_inputs, rows, positions, feeds)
        terms = self.loss(student, teacher, targets, mask, aligned)
        if not torch.isfinite(terms["loss"].detach()) and self.trainer.world_size == 1:
            # (with several ranks every one must join the gradient all-reduce: the NaN reaches the gradients
            # of all of them, and the gradient check below skips the step on every rank alike)
            self.guard.bad(self.global_step, "loss", self.trainer)
            return None  # Lightning skips backward and the optimizer step for this batch
        self.log("train/loss", terms["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"})
        if self.loss.on_policy.lmbda > 0:
            self.log("train/on_policy", float(sampled))
        return terms["loss"]

    @torch.no_grad()
    def sample_from_student(self, inputs: torch.Tensor, prompt_lens: torch.Tensor | None = None):
        """On-policy batch (GKD, ``distill/on_policy.py``): from each row's real prompt when the data
        has prompts (conversations), else from a fixed-length prefix of the row."""
        spec = self.loss.on_policy
        if prompt_lens is None:
            return on_policy.from_prefix(self.student, inputs, spec)
        return on_policy.from_prompts(self.student, inputs, prompt_lens, spec, self.pad_id, self.stop_ids)

    def validation_step(self, batch, batch_idx):
        # Student CE only: the report's perplexities come from a full evaluation after training,
        # and validating never needs the teacher (nor a cache of the validation split).
        inputs, targets = batch[0], batch[1]
        logits = self.student(input_ids=inputs, use_cache=False).logits[..., : self.vocab_size]
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        self.log("val/ce", ce, prog_bar=False, sync_dist=True)  # averaged over ranks (DDP/FSDP see different batches)

    def on_before_optimizer_step(self, optimizer) -> None:
        """A non-finite gradient: drop every gradient, so the optimizer leaves the weights as they are."""
        if self.trainer.precision == "16-mixed":
            return  # fp16's grad scaler already skips steps with inf gradients (and tunes its scale on them)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return  # the batch's loss was skipped (training_step returned None): nothing to step on
        norm = torch.nn.utils.get_total_norm(grads)
        if not torch.isfinite(norm):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self.guard.bad(self.global_step, "gradient", self.trainer)
        else:
            self.guard.good()
            if not any(isinstance(g, DTensor) for g in grads):  # plain (or DDP-reduced) gradients: the global norm
                self._grad_norm = norm
        self.log("train/skipped_steps", float(self.guard.skipped))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the norm ``on_before_optimizer_step`` already took: one pass over the gradients instead of
        two (at a 128k vocabulary the embedding and LM head gradients alone are 1 GiB of float32).

        Plain gradients are clipped here, not by Lightning: its mixed-precision plugin refuses to clip for
        any optimizer that unscales inside its step (fused AdamW), a rule for fp16's grad scaler that it
        applies under bf16 autocast too, where there is nothing to unscale. fp16 (no fused optimizer there,
        ``configure_optimizers``) and sharded (DTensor) gradients keep Lightning's clipping."""
        norm, self._grad_norm = getattr(self, "_grad_norm", None), None
        if not gradient_clip_val:
            return None
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.trainer.precision == "16-mixed" or any(type(p.grad) is not torch.Tensor for p in params):
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        elif norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        return None

    def on_save_checkpoint(self, checkpoint) -> None:
        checkpoint["distill_module"] = {"coin": self._coin.getstate(), "skipped": self.guard.skipped}

    def on_load_checkpoint(self, checkpoint) -> None:
        state = checkpoint.get("distill_module")
        if state:
            self._coin.setstate(state["coin"])
            self.guard.skipped = state["skipped"]

    def configure_optimizers(self):
        # The objective's own parameters (hidden-state projections) train with the student.
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fp16 = getattr(self._trainer, "precision", None) == "16-mixed"  # also called with no trainer (tests, tools)
        opt = adamw(groups, fused=not fp16, lr=self.lr, betas=(0.9, 0.95))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay to ``min_lr_ratio``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
