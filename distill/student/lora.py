"""LoRA and AdaLoRA students: PEFT adapters on a pruned or pretrained student.

``apply_lora`` freezes the student and wraps it in a PEFT model whose only trainable
parameters are the adapters; ``merge_lora`` folds them back into a plain HF model for
export. AdaLoRA reallocates its rank budget during training, which PEFT leaves to the
training loop: the ``AdaLoraAllocator`` callback does it (and adds AdaLoRA's orthogonal
regularisation, which PEFT only applies to a loss the HF model computes itself; ours is
computed outside the model).

A wrapped model keeps the calls the LightningModule makes: ``model(input_ids=...,
use_cache=False).logits``, ``generate``, ``get_output_embeddings()`` and ``config``. Its
``base_model`` is PEFT's tuner (LoraModel), not the HF backbone: use ``backbone(model)``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

import lightning as L
import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from peft.utils import PeftType
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from distill.errors import DistillError
from distill.student.blocks import decoder_blocks

log = logging.getLogger(__name__)

TYPES = ("lora", "adalora")
LINEAR = (nn.Linear, Conv1D)  # GPT-2's Conv1D stores its weight transposed: PEFT's fan_in_fan_out


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, LINEAR)]


def _resolve_targets(model: nn.Module, target_modules) -> tuple[list[str], bool]:
    """Full names of the linear layers to adapt, and whether any is a Conv1D (fan_in_fan_out).

    ``auto``: every linear layer inside the decoder blocks (never embeddings or the LM head).
    Otherwise names (a list or a comma-separated string) matched as PEFT does: the full
    module name or its dotted suffix (``q_proj``, ``mlp.c_proj``); each must match a linear layer.
    """
    linears = _linear_names(model)
    if target_modules is None or target_modules == "auto":
        prefix, _ = decoder_blocks(model)
        chosen = [n for n in linears if n.startswith(prefix + ".")]
        if not chosen:
            raise DistillError(f"LoRA: no linear layers inside the decoder blocks of {type(model).__name__}")
    else:
        if isinstance(target_modules, str):
            wanted = [t.strip() for t in target_modules.split(",") if t.strip()]
        elif isinstance(target_modules, Iterable):
            wanted = [str(t) for t in target_modules]
        else:
            raise DistillError(f"LoRA: target_modules must be 'auto' or a list of module names, got {target_modules!r}")
        if not wanted:
            raise DistillError("LoRA: target_modules is empty")

        def matches(name: str, target: str) -> bool:
            return name == target or name.endswith("." + target)

        unknown = [t for t in wanted if not any(matches(n, t) for n in linears)]
        if unknown:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise DistillError(
                f"LoRA: target_modules {unknown} match no linear layer of {type(model).__name__} "
                f"(its linear layers: {', '.join(leaves)})"
            )
        chosen = [n for n in linears if any(matches(n, t) for t in wanted)]
    modules = dict(model.named_modules())
    return chosen, any(isinstance(modules[n], Conv1D) for n in chosen)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistillError(f"LoRA: {name} must be a positive integer, got {value!r}")
    return value


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() yields a shared (tied) tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def apply_lora(
    model: PreTrainedModel,
    *,
    type: str = "lora",
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules="auto",
    total_steps: int | None = None,
    init_r: int | None = None,
    target_r: int | None = None,
    **extra,
) -> PeftModel:
    """Wrap ``model`` (in place) in LoRA or AdaLoRA adapters; only the adapters require grad.

    For ``adalora``, ``r`` is the target average rank unless ``target_r`` is given, ``init_r``
    defaults to 1.5x that (PEFT's 12/8), ``total_steps`` (the run's max_steps) is required, and
    ``tinit``/``tfinal`` (steps of warmup before and fine-tuning after the rank reduction)
    default to 10% and 20% of it. ``extra`` goes to the PEFT config (``deltaT``, ``beta1``,
    ``orth_reg_weight``, ``bias``, ...); unknown keys are a DistillError.
    """
    kind = str(type).lower()
    if kind not in TYPES:
        raise DistillError(f"LoRA: type must be one of {', '.join(TYPES)}, got {type!r}")
    r = _positive_int("r", r)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise DistillError(f"LoRA: dropout must be in [0, 1), got {dropout!r}")
    if isinstance(model, PeftModel):
        raise DistillError("LoRA: the student already has PEFT adapters")
    targets, fan_in_fan_out = _resolve_targets(model, target_modules)
    common = dict(
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
    )

    try:
        if kind == "lora":
            for name, value in (("init_r", init_r), ("target_r", target_r)):
                if value is not None:
                    raise DistillError(f"LoRA: {name} is an AdaLoRA setting (type=adalora); plain LoRA uses r")
            config = LoraConfig(r=r, **common, **extra)
        else:
            if (
                total_steps is None
                or isinstance(total_steps, bool)
                or not isinstance(total_steps, int)
                or total_steps < 1
            ):
                raise DistillError(
                    f"AdaLoRA needs the run's total optimizer steps (trainer.max_steps > 0), got {total_steps!r}"
                )
            target_r = _positive_int("target_r", r if target_r is None else target_r)
            init_r = _positive_int("init_r", init_r if init_r is not None else -(-target_r * 3 // 2))
            if init_r < target_r:
                raise DistillError(f"AdaLoRA: init_r ({init_r}) must be >= target_r ({target_r})")
            tinit = extra.pop("tinit", None)
            tfinal = extra.pop("tfinal", None)
            tinit = total_steps // 10 if tinit is None else tinit
            tfinal = total_steps // 5 if tfinal is None else tfinal
            if min(tinit, tfinal) < 0 or tinit >= total_steps - tfinal:
                raise DistillError(
                    f"AdaLoRA: tinit ({tinit}) + tfinal ({tfinal}) leave no rank-reduction "
                    f"phase in total_steps={total_steps}"
                )
            config = AdaLoraConfig(
                init_r=init_r, target_r=target_r, total_step=total_steps, tinit=tinit, tfinal=tfinal, **common, **extra
            )
    except TypeError as e:  # an unknown key in extra
        raise DistillError(f"LoRA: bad setting for {kind}: {e}") from None
    except ValueError as e:  # PEFT's own validation
        raise DistillError(f"LoRA: {e}") from None

    for p in model.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings():  # PEFT calls a transformers API that v5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    trainable, total = count_params(peft_model)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in targets})
    rank = f"r={r}" if kind == "lora" else f"init_r={init_r} -> target_r={target_r} over {total_steps} steps"
    log.info(
        "%s (%s) on %d modules (%s): %s trainable of %s params (%.2f%%)",
        kind,
        rank,
        len(targets),
        ", ".join(leaves),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return peft_model


def merge_lora(model: nn.Module) -> PreTrainedModel:
    """Fold the adapters into the base weights and return the plain HF model (no PEFT keys).
    A model without adapters is returned unchanged."""
    if not isinstance(model, PeftModel):
        return model
    merged = model.merge_and_unload()
    # The frozen base weights stay frozen after unloading; a merged model is a normal model.
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


def backbone(model: nn.Module) -> nn.Module:
    """The HF backbone (LlamaModel, GPT2Model, ...) of a causal LM, through PEFT if wrapped:
    what ``model.base_model`` is for a plain HF model (for PEFT it is the tuner instead).
    The adapters live inside it, so running it runs them."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    return inner.base_model


def is_adalora(model: nn.Module) -> bool:
    """Whether ``model`` has AdaLoRA adapters, which need ``AdaLoraAllocator`` while training."""
    if not isinstance(model, PeftModel):
        return False
    config = model.peft_config.get(model.active_adapter)
    return config is not None and config.peft_type == PeftType.ADALORA


class AdaLoraAllocator(L.Callback):
    """Runs AdaLoRA's rank allocation for the LightningModule's ``student``.

    PEFT requires ``update_and_allocate(step)`` after ``optimizer.step()`` and before
    ``zero_grad()`` (it scores adapter entries by |p * grad|). Lightning zeroes gradients
    inside the next step's closure (after ``training_step``), so ``on_train_batch_end`` is the
    point where the step is done and the gradients are still there; with gradient
    accumulation it acts only on batches that stepped the optimizer. The step passed is
    ``trainer.global_step`` (1 after the first step), so the final allocation happens at
    ``total_step - tfinal`` even with ``tfinal=0``.

    It also adds AdaLoRA's orthogonal regularisation of P and Q (``orth_reg_weight``) to the
    adapter gradients after each backward: PEFT adds it only to a loss returned by the model.
    """

    def __init__(self, orthogonal_regularization: bool = True):
        self.orthogonal_regularization = orthogonal_regularization
        self._last_step = -1
        self._model: PeftModel | None = None
        self._restored: dict | None = None
        self.budgets: list[int] = []  # rank budget (sum of kept ranks) after each step, for tests and logs

    @staticmethod
    def _student(pl_module) -> PeftModel | None:
        student = getattr(pl_module, "student", None)
        return student if is_adalora(student) else None

    def on_train_start(self, trainer, pl_module):
        self._last_step = trainer.global_step  # 0, or the resumed step
        self._model = self._student(pl_module)
        if self._model is not None and self._restored:
            self._load_allocator(self._model, self._restored)
        self._restored = None

    # Checkpointed with the run: the importance averages and the final rank pattern, without
    # which a run resumed after ``total_step - tfinal`` could not keep the pruned ranks masked.
    def state_dict(self) -> dict:
        if self._model is None:
            return {}
        model = self._model
        allocator = model.base_model.rankallocator
        return {
            "rank_pattern": model.peft_config[model.active_adapter].rank_pattern,
            "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt,
            "exp_avg_unc": allocator.exp_avg_unc,
            "budgets": list(self.budgets),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict)  # applied at on_train_start, once the student is known

    def _load_allocator(self, model: PeftModel, state: dict) -> None:
        model.peft_config[model.active_adapter].rank_pattern = state.get("rank_pattern")
        allocator = model.base_model.rankallocator
        params = dict(model.base_model.model.named_parameters())
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, key, {n: t.to(params[n].device) for n, t in state.get(key, {}).items() if n in params})
        self.budgets = list(state.get("budgets", []))

    def on_after_backward(self, trainer, pl_module):
        student = self._student(pl_module)
        if student is None or not self.orthogonal_regularization:
            return
        weight = student.peft_config[student.active_adapter].orth_reg_weight
        if weight <= 0:
            return
        named = [
            (n, p)
            for n, p in student.named_parameters()
            if p.requires_grad and p.grad is not None and ("lora_A" in n or "lora_B" in n)
        ]
        if not named:
            return
        params = [p for _, p in named]
        with torch.enable_grad():
            reg = orthogonal_regularization(named)
            # Same scaling as the loss: divided over accumulated batches, times an AMP scaler's scale.
            scale = weight / max(trainer.accumulate_grad_batches, 1)
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                scale = scale * scaler.get_scale()
            # autograd.grad rather than backward: no DDP reducer hooks fire (the term is
            # identical on every rank, nothing to all-reduce).
            grads = torch.autograd.grad(reg * scale, params)
        for p, g in zip(params, grads):
            p.grad.add_(g.to(p.grad.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        student = self._student(pl_module)
        step = trainer.global_step
        if student is None or step == self._last_step:
            return  # not AdaLoRA, or an accumulation batch that did not step the optimizer
        self._last_step = step
        student.base_model.update_and_allocate(step)
        self.budgets.append(rank_budget(student))
        pl_module.log("train/adalora_rank", float(self.budgets[-1]), on_step=True, on_epoch=False)


def orthogonal_regularization(named: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """AdaLoRA's penalty (as PEFT computes it): the mean over the A (P^T) and B (Q) matrices of
    ||A A^T - I||_F and ||B^T B - I||_F."""
    total = 0.0
    for n, p in named:
        cov = p @ p.T if "lora_A" in n else p.T @ p
        total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device))
    return total / len(named)


def rank_budget(model: PeftModel) -> int:
    """Sum over AdaLoRA adapters of the ranks still in use (non-zero singular values lora_E)."""
    adapter = model.active_adapter
    return int(sum((p != 0).sum().item() for n, p in model.named_parameters() if f"lora_E.{adapter}" in n))
