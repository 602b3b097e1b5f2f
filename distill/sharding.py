"""The FSDP2 sharding plan of a run, and the plain model behind a sharded one.

Every transformer block of the student is its own ``fully_shard`` unit and the rest (embeddings,
final norm, head) the root unit; the objective's trainable projections, if any, are one unit more. The
frozen teacher is either replicated (default: each rank holds it whole, as under DDP) or sharded
with its own ``fully_shard`` (``trainer.strategy.shard_teacher=true``; several teachers: each one). A sharded teacher still
never gathers gradients: its parameters have ``requires_grad=False``, it is outside
``parameters()`` of the LightningModule (so outside the optimizer and checkpoints), and its forward
runs under ``no_grad``, so no autograd graph reaches it and FSDP's post-backward reduce-scatter
hooks never fire for it. Its forward only all-gathers the weights and frees them.

FSDP2 changes modules in place (their parameters become DTensor shards). What the run evaluates
and exports afterwards must be a plain model with full weights: before sharding we keep a
weightless clone (parameters on the meta device) and :func:`unsharded` fills it from the
gathered full state dict. Nothing in torch or Lightning undoes ``fully_shard``, hence this.
"""

from __future__ import annotations

import copy
import logging
import weakref

import torch
from torch import nn

from distill.errors import DistillError

log = logging.getLogger(__name__)

# sharded module -> weightless plain clone taken before sharding (see unsharded)
_TEMPLATES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()

# bitsandbytes keeps packed weights and their quantization state on its own Parameter subclasses,
# which fully_shard replaces by plain DTensor shards (measured: "'Parameter' object has no attribute 'quant_state'")
PACKED_PARAMS = ("Params4bit", "Int8Params")
PACKED_UNDER_FSDP = "{what} (bitsandbytes-packed weights) cannot be sharded by trainer=fsdp: {fix}"
FUSED_UNDER_FSDP = (
    "loss.fused_linear does not work under trainer=fsdp (it reads the sharded LM head outside the "
    "forward): set loss.fused_linear=false or use trainer=ddp"
)


def block_classes(model: nn.Module) -> set[str]:
    """Names of the model's transformer-block classes: HF lists them as ``_no_split_modules``
    (the units it never splits across devices), which is the natural FSDP wrapping unit."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard_model(
    model: nn.Module, mesh, reshard_root: bool | None = None, what: str = "the student", fix: str = "use trainer=ddp"
) -> nn.Module:
    """``fully_shard`` every transformer block, then the rest (embeddings, final norm, head) as the
    root unit. Keeps a weightless plain clone first, for :func:`unsharded`."""
    from torch.distributed.fsdp import fully_shard

    if any(type(p).__name__ in PACKED_PARAMS for p in model.parameters()):
        raise DistillError(PACKED_UNDER_FSDP.format(what=what, fix=fix))

    _TEMPLATES[model] = weightless_clone(model)
    blocks = block_classes(model)
    if not blocks:
        raise DistillError(
            f"trainer=fsdp: {type(model).__name__} declares no transformer block classes "
            "(_no_split_modules) to shard by"
        )
    for m in list(model.modules()):
        if m is not model and type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_root)
    return model


def shard_distillation_module(module, mesh, shard_teacher: bool = False) -> None:
    """The FSDP2 plan of a ``DistillationModule`` (called from its ``configure_model``)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(module.student, FSDPModule):
        return  # configure_model runs again on a later fit/validate of the same module
    if module.loss.fused_linear:
        # The fused loss reads the LM head's weight outside the model's forward, where FSDP2 holds
        # only this rank's shard (and would never reduce-scatter its gradient).
        raise DistillError(FUSED_UNDER_FSDP)
    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    shard_model(module.student, dp_mesh)
    if any(p.requires_grad for p in module.loss.parameters()):
        # hidden-state projections train with the student: as a unit of their own their gradients
        # are reduce-scattered like the student's (a plain parameter would drift apart per rank)
        fully_shard(module.loss, mesh=dp_mesh)
    teachers = live_teacher_models(module.teacher) if shard_teacher else []
    for teacher in teachers:
        teacher.requires_grad_(False)
        # reshard the root after forward too: there is never a backward to keep it gathered for
        shard_model(
            teacher, dp_mesh, reshard_root=True, what="the teacher", fix="set trainer.strategy.shard_teacher=false"
        )
    if teachers:
        log.info(
            "FSDP2: %d teacher(s) sharded over %d ranks (inference only, no gradients)", len(teachers), dp_mesh.size()
        )
    log.info(
        "FSDP2: student sharded over %d ranks (%s)", dp_mesh.size(), ", ".join(sorted(block_classes(module.student)))
    )


def live_teacher_models(teacher) -> list[nn.Module]:
    """The weights of every live teacher behind the module's scorer: one ``Teacher``'s, or each of several
    (``MixtureTeacher.live``); a cache has none. Several teachers run one after another, each gathered only
    during its own forward, so sharding each one divides all of their weights by the ranks."""
    scorers = list(getattr(teacher, "live", None) or [teacher])
    return [m for m in (getattr(s, "model", None) for s in scorers) if m is not None]


def weightless_clone(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters live on the meta device (no memory); buffers are copied, so
    non-persistent ones (rotary frequencies) that no state dict carries stay valid."""
    memo = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def unsharded(model: nn.Module | None) -> nn.Module | None:
    """The plain model with full weights behind an FSDP2-sharded one (the same object when it was
    never sharded). Collective: every rank must call it, in the same order; every rank gets the
    full weights (rank 0 evaluates and exports them)."""
    if model is None or model not in _TEMPLATES:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    template = _TEMPLATES.pop(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    _, unexpected = template.load_state_dict(state, strict=False, assign=True)
    if hasattr(template, "tie_weights"):
        template.tie_weights()  # assign=True replaced tied parameters one by one
    empty = [n for n, p in template.named_parameters() if p.is_meta]
    if unexpected or empty:
        raise RuntimeError(f"gathering the sharded model: no weights for {empty[:3]}, unexpected {unexpected[:3]}")
    return template
