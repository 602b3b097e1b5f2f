"""Quantization-aware training (QAT) of the student with torchao's fake quantization.

During training every intended linear layer is a torchao ``FakeQuantizedLinear``: its weight
(int2/3/4/8, symmetric, per group of ``group_size`` input channels or per output channel) and,
with ``activations="int8"``, its input (int8 dynamic per-token asymmetric) are rounded onto the
integer grid in the forward and the straight-through estimator passes the gradient, while the
optimizer keeps full-precision weights. ``finalize`` then runs torchao's convert step, which
quantizes those weights for real (``IntxUnpackedToInt8Tensor``: int values, scales, zero points).

What torchao does and does not do here (torchao 0.18, x86 CPU), and how we cover it:
- ``QATConfig(Int8DynamicActivationIntxWeightConfig | IntxWeightOnlyConfig, step=...)`` is the
  one API for both steps, and the same config is the PTQ baseline (``ptq.py``), so QAT vs PTQ is
  one scheme. Fake quant and the converted model agree to the last bit in fp32.
- The legacy ``Int8DynActInt4WeightQATQuantizer`` silently skips layers whose width the group
  size doesn't divide; ``QATConfig`` raises a bare ValueError. We check widths ourselves first
  (a DistillError naming layer and width, or an explicit, logged skip) and verify afterwards
  that every planned layer, and no other, carries fake quantization / a quantized weight.
- The converted weights don't pass through ``save_pretrained`` (transformers 5 can't take the
  storage pointer of the tensor subclass unless the model was loaded with a TorchAoConfig, and
  even then int4 is stored unpacked, one byte per value, and needs torchao to load). So
  ``finalize`` returns a plain HF model whose weights are the dequantized values (exactly
  int × scale, in fp32) with the int8 activation rounding as forward pre-hooks, i.e. the same
  forward as the torchao model; the torchao model is kept as ``plugin.quantized`` for the packed
  export (``export.py``) and speed measurement. Scales are rounded to fp16 at convert time, the
  precision the packed checkpoint stores, so evaluated, HF-exported and packed models agree.
- torchao has no packed low-bit CPU kernel in this build (the KleidiAI / torchao-lowbit formats
  need libraries that are not loaded), so the quantized forward dequantizes per call: it
  measures accuracy, not speed (see ``benchmarks/quant_generation.py``).
- Only ``nn.Linear`` (and ``nn.Embedding`` on request) is supported: GPT-2's ``Conv1D`` or fused
  MoE expert tensors are refused by name rather than left unquantized.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchao.quantization import (
    Int8DynamicActivationIntxWeightConfig,
    IntxUnpackedToInt8Tensor,
    IntxWeightOnlyConfig,
    quantize_,
)
from torchao.quantization.granularity import PerAxis, PerGroup
from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear, QATConfig

from distill.errors import DistillError
from distill.quant.activations import quantize_activations
from distill.quant.base import QuantPlugin
from distill.quant.export import SCALE_DTYPE, dir_size_bytes, save_packed

log = logging.getLogger(__name__)

WEIGHT_BITS = (2, 3, 4, 8)  # int1 is not supported by torchao's QAT; 2 bits is the practical floor
# The presets the configs name; anything else is the same plugin with other arguments.
PRESETS = {
    "qat_int8_int4": dict(weight_bits=4, activations="int8"),
    "qat_int8": dict(weight_bits=8, activations="int8"),
    "qat_int8_int2": dict(weight_bits=2, activations="int8"),
}


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme: symmetric ``weight_bits`` weights per group of ``group_size``
    input channels (None: one scale per output channel), optional int8 per-token activations."""

    weight_bits: int = 4
    group_size: int | None = 32
    activations: str | None = "int8"

    def __post_init__(self):
        if self.weight_bits not in WEIGHT_BITS:
            raise DistillError(f"quant.weight_bits must be one of {WEIGHT_BITS}, got {self.weight_bits!r}")
        if self.activations not in (None, "int8"):
            raise DistillError(f"quant.activations must be int8 or null, got {self.activations!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise DistillError(
                f"quant.group_size must be a positive integer or null (per channel), got {self.group_size!r}"
            )

    @property
    def name(self) -> str:
        weights = f"int{self.weight_bits}"
        if self.activations is None:
            return f"qat_w{self.weight_bits}"
        return "qat_int8" if self.weight_bits == 8 else f"qat_int8_{weights}"

    @property
    def weight_dtype(self) -> torch.dtype:
        return getattr(torch, f"int{self.weight_bits}")

    @property
    def granularity(self):
        return PerAxis(0) if self.group_size is None else PerGroup(self.group_size)

    def fits(self, in_features: int) -> bool:
        return self.group_size is None or in_features % self.group_size == 0

    def block_size(self, in_features: int) -> tuple[int, int]:
        return (1, in_features if self.group_size is None else self.group_size)

    def linear_config(self):
        """torchao's PTQ config for the linear layers (QAT infers its fake quantization from it)."""
        if self.activations == "int8":
            return Int8DynamicActivationIntxWeightConfig(
                weight_dtype=self.weight_dtype, weight_granularity=self.granularity
            )
        return IntxWeightOnlyConfig(weight_dtype=self.weight_dtype, granularity=self.granularity)

    def embedding_config(self):
        """Embeddings are looked up, not multiplied: weight-only, same grid as the linears."""
        return IntxWeightOnlyConfig(weight_dtype=self.weight_dtype, granularity=self.granularity)


@dataclass
class Plan:
    """Which modules (by qualified name) get quantized, and which were skipped (name -> width)."""

    linears: list[str] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return set(self.linears) | set(self.embeddings)


def plan_layers(
    model: nn.Module,
    scheme: Scheme,
    *,
    quantize_embeddings: bool = False,
    quantize_lm_head: bool = False,
    skip_indivisible: bool = False,
) -> Plan:
    """The layers to quantize: every ``nn.Linear`` but the LM head (unless asked), the input
    embedding if asked. Refuses what it cannot quantize instead of leaving it out quietly."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    check_ties(head, embed, quantize_embeddings, quantize_lm_head)
    plan = Plan()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if module is head and not quantize_lm_head:
                continue
            if not scheme.fits(module.in_features):
                plan.skipped[name] = module.in_features
            else:
                plan.linears.append(name)
        elif isinstance(module, nn.Embedding) and module is embed and quantize_embeddings:
            if not scheme.fits(module.embedding_dim):
                plan.skipped[name] = module.embedding_dim
            else:
                plan.embeddings.append(name)
    unsupported = unsupported_weights(model)
    if unsupported:
        raise DistillError(
            "QAT quantizes nn.Linear layers only; these weights live in other modules and would stay "
            "in full precision: "
            + ", ".join(f"{n} ({t})" for n, t in unsupported[:6])
            + (f" and {len(unsupported) - 6} more" if len(unsupported) > 6 else "")
        )
    if plan.skipped:
        widths = ", ".join(f"{n} (in_features {w})" for n, w in plan.skipped.items())
        if not skip_indivisible:
            raise DistillError(
                f"quant.group_size {scheme.group_size} does not divide the input width of {widths}; "
                "choose a group size that divides every width, or set quant.skip_indivisible=true "
                "to keep those layers in full precision"
            )
        log.warning(
            "QAT: %d layer(s) kept in full precision (group size %s does not divide their width): %s",
            len(plan.skipped),
            scheme.group_size,
            widths,
        )
    if not plan.linears:
        raise DistillError("QAT found no linear layer to quantize in the student")
    return plan


def check_ties(head, embed, quantize_embeddings: bool, quantize_lm_head: bool) -> None:
    tied = head is not None and embed is not None and head.weight is embed.weight
    if tied and quantize_embeddings != quantize_lm_head:
        raise DistillError(
            "the LM head and the input embedding share one weight (tie_word_embeddings): set "
            "quant.quantize_embeddings and quant.quantize_lm_head both true or both false"
        )


def unsupported_weights(model: nn.Module) -> list[tuple[str, str]]:
    """Matrices (ndim >= 2) held by modules other than Linear/Embedding (Conv1D, fused experts)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.ndim >= 2:
                found.append((f"{name}.{pname}" if name else pname, type(module).__name__))
    return found


def named(names: set[str]):
    """A quantize_ filter selecting modules by qualified name."""
    return lambda module, fqn: fqn in names


def prepare(model: nn.Module, scheme: Scheme, plan: Plan) -> None:
    """Insert fake quantization into the planned layers, in place, and check that it is there."""
    quantize_(model, QATConfig(scheme.linear_config(), step="prepare"), filter_fn=named(set(plan.linears)))
    if plan.embeddings:
        quantize_(model, QATConfig(scheme.embedding_config(), step="prepare"), filter_fn=named(set(plan.embeddings)))
    verify_prepared(model, scheme, plan)


def verify_prepared(model: nn.Module, scheme: Scheme, plan: Plan) -> None:
    """Every planned layer carries the scheme's fake quantizers, and no other layer any."""
    problems = []
    for name, module in model.named_modules():
        fake = isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding))
        if name not in plan.names:
            if fake:
                problems.append(f"{name}: fake-quantized but not planned")
            continue
        wq = getattr(module, "weight_fake_quantizer", None)
        if not fake or wq is None:
            problems.append(f"{name}: no weight fake quantizer ({type(module).__name__})")
            continue
        if wq.config.dtype != scheme.weight_dtype or wq.config.granularity != scheme.granularity:
            problems.append(f"{name}: weight fake quantizer {wq.config.dtype}/{wq.config.granularity}")
        if name in plan.linears:
            aq = module.activation_fake_quantizer
            if (aq is not None) != (scheme.activations is not None):
                problems.append(f"{name}: activation fake quantizer {'present' if aq else 'missing'}")
    if problems:
        raise RuntimeError("torchao did not apply fake quantization as planned: " + "; ".join(problems))


def convert(model: nn.Module, scheme: Scheme, plan: Plan, scale_dtype: torch.dtype = SCALE_DTYPE) -> None:
    """torchao's convert step, in place: fake-quantized layers become real quantized weights
    (scales rounded to ``scale_dtype``, the precision the packed checkpoint keeps)."""
    quantize_(model, QATConfig(scheme.linear_config(), step="convert"), filter_fn=named(set(plan.linears)))
    if plan.embeddings:
        quantize_(model, QATConfig(scheme.embedding_config(), step="convert"), filter_fn=named(set(plan.embeddings)))
    round_scales(model, scale_dtype)
    verify_quantized(model, scheme, plan)


def round_scales(model: nn.Module, dtype: torch.dtype = SCALE_DTYPE) -> None:
    """fp32 scales to the values ``dtype`` holds (16-bit scales are stored as they are)."""
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(w, IntxUnpackedToInt8Tensor) and w.scale.dtype == torch.float32:
            w.scale = w.scale.to(dtype).to(w.scale.dtype)


def verify_quantized(model: nn.Module, scheme: Scheme, plan: Plan) -> None:
    """Every planned layer holds an int weight of the scheme's bits and blocks, and no other does."""
    problems = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        quantized = isinstance(w, IntxUnpackedToInt8Tensor)
        if name not in plan.names:
            if quantized:
                problems.append(f"{name}: quantized but not planned")
            continue
        if not quantized or isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding)):
            problems.append(f"{name}: not converted ({type(module).__name__}, {type(w).__name__})")
            continue
        if w.target_dtype != scheme.weight_dtype or tuple(w.block_size) != scheme.block_size(w.shape[-1]):
            problems.append(f"{name}: {w.target_dtype} blocks {w.block_size}")
        wants_act = scheme.activations is not None and name in plan.linears
        if (w.activation_quantization is not None) != wants_act:
            problems.append(f"{name}: activation quantization {w.activation_quantization}")
    if problems:
        raise RuntimeError("torchao did not quantize as planned: " + "; ".join(problems))


def dequantized_copy(quantized: nn.Module) -> nn.Module:
    """A plain model (saves and reloads with transformers alone) whose forward is the quantized
    one: each quantized weight replaced by its dequantized values (exactly int × scale) and, where
    torchao quantizes activations, the same rounding as a forward pre-hook. Ties are restored."""
    plain = copy.deepcopy(quantized)
    for module in plain.modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, IntxUnpackedToInt8Tensor):
            continue
        module.weight = nn.Parameter(w.dequantize(), requires_grad=False)
        if w.activation_quantization is not None:
            module.register_forward_pre_hook(quantize_activations)
    retie(plain)
    return plain


def retie(model: nn.Module) -> None:
    """Convert steps replace the head and the embedding separately; re-share a tied weight."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "tie_word_embeddings", False):
        return
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is not embed.weight:
        if not torch.equal(head.weight, embed.weight):
            raise RuntimeError("tied LM head and embedding were quantized to different values")
        head.weight = embed.weight


class QATPlugin(QuantPlugin):
    """Lightning precision plugin: fake-quantizes the student for training (``quantize``), converts
    it to real quantized weights afterwards (``finalize``), writes a packed checkpoint
    (``export_extra``). The trainer's precision (32-true, bf16-mixed) is honoured as usual."""

    def __init__(
        self,
        precision: str | None = "32-true",
        device: str = "cpu",
        weight_bits: int = 4,
        group_size: int | None = 32,
        activations: str | None = "int8",
        skip_indivisible: bool = False,
        quantize_embeddings: bool = False,
        quantize_lm_head: bool = False,
    ):
        super().__init__(precision, device)
        # 0 also means per channel, for command lines where null is awkward.
        self.scheme = Scheme(int(weight_bits), group_size or None, activations)
        self.name = self.scheme.name
        self.skip_indivisible = skip_indivisible
        self.quantize_embeddings, self.quantize_lm_head = quantize_embeddings, quantize_lm_head
        self.plan: Plan | None = None
        self.quantized: nn.Module | None = None  # the torchao model, after finalize

    def quantize(self, student: nn.Module) -> None:
        self.plan = plan_layers(
            student,
            self.scheme,
            quantize_embeddings=self.quantize_embeddings,
            quantize_lm_head=self.quantize_lm_head,
            skip_indivisible=self.skip_indivisible,
        )
        prepare(student, self.scheme, self.plan)
        log.info(
            "QAT %s: fake quantization in %d linear layer(s)%s",
            self.name,
            len(self.plan.linears),
            f" and {len(self.plan.embeddings)} embedding(s)" if self.plan.embeddings else "",
        )

    def finalize(self, student: nn.Module) -> nn.Module:
        """The plain dequantized model to evaluate and ``save_pretrained`` (fp32: int × fp16 scale
        is exact there, not in bf16); the torchao model is kept as ``self.quantized``."""
        if self.plan is None:
            raise RuntimeError("QATPlugin.finalize before quantize: the student was never fake-quantized")
        self.quantized = copy.deepcopy(student)
        convert(self.quantized, self.scheme, self.plan)
        self.quantized.eval()
        return dequantized_copy(self.quantized).eval()

    def export_extra(self, student: nn.Module, out_dir: Path) -> dict:
        """The packed low-bit checkpoint in ``out_dir/packed`` and the sizes on disk."""
        if self.quantized is None:
            raise RuntimeError("QATPlugin.export_extra before finalize")
        out_dir = Path(out_dir)
        packed = out_dir / "packed"
        save_packed(self.quantized, packed, self.scheme.weight_bits, self.scheme.group_size)
        metrics = {"quant.packed_bytes": dir_size_bytes(packed)}
        hf = out_dir / "student"
        if hf.exists():
            metrics["quant.hf_bytes"] = dir_size_bytes(hf)
        return metrics

    def report(self) -> dict:
        plan = self.plan or Plan()
        return {
            "quant": self.name,
            "weight_bits": self.scheme.weight_bits,
            "group_size": self.scheme.group_size,
            "activations": self.scheme.activations,
            "quantized_layers": len(plan.linears) + len(plan.embeddings),
            "embeddings": plan.embeddings,
            "lm_head": self.quantize_lm_head,
            "skipped": dict(plan.skipped),
        }
