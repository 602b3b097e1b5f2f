"""Quantization-aware training in llama.cpp's own formats: ``quant=qat_q4_0|qat_q8_0|qat_ternary``.

The student trains through ``distill.quant.ggml.fake_quantize``, ggml's reference quantizer in
torch, bit for bit: every linear layer of the decoder blocks in ``weights`` (Q4_0, Q8_0 or TQ2_0),
the input embedding and the LM head in ``embeddings`` (F16 by default, as llama.cpp's converter
keeps them; any ggml type). So the weights the student is trained and evaluated with are exactly
the ones its GGUF file holds: ``finalize`` bakes the fake-quantized values into a plain HF model,
which quantizes to itself again (the formats are idempotent), and ``distill-export`` /
``export.gguf`` writes those blocks (``tests/export``: read back, they equal the model's weights).

How, and why not torchao: the weight of each planned module gets a ``torch.nn.utils.parametrize``
parametrization (``ggml.FakeQuantize``: exact forward, straight-through gradient), so Linear and
Embedding are handled alike, a tied head and embedding stay one parameter, and the optimizer
keeps the full-precision originals. torchao's fake quantizers use a symmetric grid
(``max|w| / 7.5``); Q4_0 maps the signed extreme to -8 and truncates ``x / d + 8.5``, and Q8_0 /
TQ2_0 round half away from zero, so torchao's grid is not llama.cpp's.

``PTQ`` (``quant=ptq_q4_0`` ...) is the baseline: full-precision training, the same quantizer once
at the end; exactly what converting the full-precision student to that type gives.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.utils import parametrize

from distill.errors import DistillError
from distill.quant.base import QuantPlugin
from distill.quant.ggml import BLOCK_SIZE, TYPES, ActivationQuantizer, FakeQuantize, fake_quantize
from distill.quant.qat import unsupported_weights

log = logging.getLogger(__name__)

WEIGHT_TYPES = tuple(BLOCK_SIZE)  # q4_0, q8_0, tq2_0
# the name a run reports (metrics.json "quant", the memory estimate reads its qat_/ptq_ prefix)
NAMES = {"q4_0": "q4_0", "q8_0": "q8_0", "tq2_0": "ternary"}
# the record saved in the student's config.json: what distill-export writes without being told
CONFIG_KEY = "ggml_qat"


def plan(model: nn.Module, weights: str, embeddings: str, fallback: str | None = None) -> dict[str, str]:
    """Qualified module name -> ggml type, for every module whose weight gets fake-quantized:
    each ``nn.Linear`` but the head in ``weights``, the input embedding and the head in
    ``embeddings``; a layer whose width the block does not divide in ``fallback`` (as llama-quantize
    falls back, e.g. TQ2_0 -> Q4_0), or refused when it is None (DistillError), as are weights it cannot place."""
    if weights not in WEIGHT_TYPES:
        raise DistillError(f"quant.weights must be one of {', '.join(WEIGHT_TYPES)}, got {weights!r}")
    for key, value in (("embeddings", embeddings), ("fallback", fallback)):
        if value is not None and value not in TYPES:
            raise DistillError(f"quant.{key} must be one of {', '.join(TYPES)}, got {value!r}")
    if any("lora" in name for name, _ in model.named_modules()):
        raise DistillError(
            f"quant=qat_{NAMES[weights]} trains the student's own weights in {weights}; LoRA adapters merged "
            "afterwards would move them off the grid: set student.lora.r=0"
        )
    unsupported = unsupported_weights(model)
    if unsupported:
        raise DistillError(
            "ggml QAT places nn.Linear / nn.Embedding weights only; these live in other modules "
            f"(e.g. fused MoE experts): {', '.join(f'{n} ({t})' for n, t in unsupported[:4])}"
        )
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    types: dict[str, str] = {}
    for name, module in model.named_modules():
        if module is head or module is embed:
            types[name] = embeddings
        elif isinstance(module, nn.Linear):
            types[name] = weights
        if (
            name in types
            and fallback
            and types[name] in BLOCK_SIZE
            and module.weight.shape[-1] % BLOCK_SIZE[types[name]]
        ):
            types[name] = fallback
    bad = [
        f"{name} (width {module.weight.shape[-1]})"
        for name, module in model.named_modules()
        if name in types and types[name] in BLOCK_SIZE and module.weight.shape[-1] % BLOCK_SIZE[types[name]]
    ]
    if bad:
        qtype = next(types[n.split(" ")[0]] for n in bad)
        raise DistillError(
            f"{qtype} quantizes rows in blocks of {BLOCK_SIZE[qtype]}; these input widths are not multiples: "
            + ", ".join(bad[:4])
            + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            + "; set quant.fallback (e.g. q4_0, as llama-quantize does) to train those layers in another type"
        )
    if not any(t == weights for t in types.values()):
        raise DistillError("ggml QAT found no linear layer to quantize in the student")
    return types


def fallen(model: nn.Module, types: dict[str, str], weights: str) -> list[str]:
    """The block layers planned in the fallback type (for the log and the report)."""
    special = {model.get_input_embeddings(), model.get_output_embeddings()}
    return sorted(n for n, m in model.named_modules() if n in types and m not in special and types[n] != weights)


def attach(model: nn.Module, types: dict[str, str], enabled: bool = True) -> list[FakeQuantize]:
    """Fake quantization on every planned weight, in place; returns the parametrizations."""
    modules = dict(model.named_modules())
    attached = []
    for name, qtype in types.items():
        if qtype != "f32":  # a tied head and embedding: both parametrized, one original parameter
            attached.append(FakeQuantize(qtype, enabled))
            parametrize.register_parametrization(modules[name], "weight", attached[-1], unsafe=True)
    return attached


def quantize_inputs(model: nn.Module, types: dict[str, str], enabled: bool = True) -> list[ActivationQuantizer]:
    """Activations as llama.cpp's CPU kernels quantize them (``ggml.fake_quantize_activations``): a
    forward pre-hook on every planned matmul (the embedding is a lookup); the hooks stay on the baked
    model, so distill's evaluation runs what llama.cpp runs. Returns the hooks."""
    embed = model.get_input_embeddings()
    hooks = []
    for name, module in model.named_modules():
        if name in types and module is not embed and types[name] != "f32":
            hooks.append(ActivationQuantizer(types[name], enabled))
            module.register_forward_pre_hook(hooks[-1])
    return hooks


def bake(model: nn.Module) -> nn.Module:
    """Replace every parametrized weight by its fake-quantized value (a plain model again), in place."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    retie(model)
    return model


def retie(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and embed is not None:
            head.weight = embed.weight


def round_weights(model: nn.Module, types: dict[str, str]) -> None:
    """PTQ: each planned weight replaced by its quantized value once (no training through it)."""
    modules = dict(model.named_modules())
    for name, qtype in types.items():
        w = modules[name].weight
        w.data = fake_quantize(w.data, qtype)


class GGMLQATPlugin(QuantPlugin):
    """Lightning precision plugin: ggml-format fake quantization while training, baked into a plain
    model at the end. ``gguf_type`` is the type the run's GGUF export writes."""

    kind = "qat"

    def __init__(
        self,
        precision: str | None = "32-true",
        device: str = "cpu",
        weights: str = "q4_0",
        embeddings: str = "f16",
        activations: bool = False,
        fallback: str | None = None,
        start_step: int = 0,
    ):
        super().__init__(precision, device)
        self.fallback = fallback
        if not isinstance(start_step, int) or isinstance(start_step, bool) or start_step < 0:
            raise DistillError(f"quant.start_step must be a non-negative integer, got {start_step!r}")
        self.start_step = start_step
        self.quantizers: list = []  # the parametrizations and activation hooks, switched on at start_step
        self.activations = bool(activations)
        if weights not in WEIGHT_TYPES:
            raise DistillError(f"quant.weights must be one of {', '.join(WEIGHT_TYPES)}, got {weights!r}")
        self.weights, self.embeddings = weights, str(embeddings)
        self.name = f"{self.kind}_{NAMES[weights]}"
        self.types: dict[str, str] | None = None
        self.fallen: list[str] = []  # layers in the fallback type

    @property
    def gguf_type(self) -> str:
        return self.weights

    def quantize(self, student: nn.Module) -> None:
        self.types = plan(student, self.weights, self.embeddings, self.fallback)
        self.fallen = fallen(student, self.types, self.weights)
        on = self.start_step == 0
        self.quantizers = attach(student, self.types, on)
        if self.activations:
            self.quantizers += quantize_inputs(student, self.types, on)
        log.info(
            "QAT %s: %d linear layer(s) trained through ggml's %s quantizer%s, embeddings/head in %s%s",
            self.name,
            sum(t == self.weights for t in self.types.values()),
            self.weights,
            f" from optimizer step {self.start_step} (full precision before)" if self.start_step else "",
            self.embeddings,
            ", activations as llama.cpp's CPU kernels quantize them" if self.activations else "",
        )

    def finalize(self, student: nn.Module) -> nn.Module:
        if self.types is None:
            raise RuntimeError(f"{type(self).__name__}.finalize before quantize")
        self.switch(True)  # what is baked and evaluated is the quantized model, whatever step training stopped at
        student = bake(student)
        student.config.update({CONFIG_KEY: self.record()})
        return student.eval()

    def switch(self, on: bool) -> None:
        for quantizer in self.quantizers:
            quantizer.enabled = on

    def callbacks(self) -> list:
        return [QuantizeFrom(self)] if self.start_step else []

    def check_steps(self, max_steps: int | None) -> None:
        if self.start_step and max_steps is not None and 0 <= max_steps <= self.start_step:
            raise DistillError(
                f"quant.start_step={self.start_step} is not before trainer.max_steps={max_steps}: the student "
                f"would never train through the quantizer (that is PTQ: quant=ptq_{NAMES[self.weights]})"
            )

    def export_extra(self, student: nn.Module, out_dir: Path) -> dict:
        return {}  # the GGUF export (distill.export) is the packed form, written by the run's export step

    def record(self) -> dict:
        return {"weights": self.weights, "embeddings": self.embeddings, "fallback": self.fallback}

    def report(self) -> dict:
        types = self.types or {}
        return {
            "quant": self.name,
            "gguf_type": self.weights,
            "embeddings": self.embeddings,
            "quantized_layers": sum(t == self.weights for t in types.values()),
            "activations": "llama.cpp CPU" if self.activations else None,
            "fallback_layers": self.fallen,
            "start_step": self.start_step,
        }


class QuantizeFrom(Callback):
    """``quant.start_step=N``: full-precision training for the first N optimizer steps, fake
    quantization from step N on (torchtune's ``fake_quant_after_n_steps``; QAT as the last phase of
    training, at the schedule's lower learning rates). Set from ``trainer.global_step`` before every
    batch, so a resumed run is in the phase its step says."""

    def __init__(self, plugin: GGMLQATPlugin):
        self.plugin = plugin

    def on_fit_start(self, trainer, pl_module) -> None:
        self.plugin.check_steps(trainer.max_steps)  # the run checks it before training; a direct fit here

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.plugin.switch(trainer.global_step >= self.plugin.start_step)


class GGMLPTQPlugin(GGMLQATPlugin):
    """``quant=ptq_q4_0|ptq_q8_0|ptq_ternary``: trains in full precision; ``finalize`` rounds the planned
    weights once with the same quantizer. The baseline QAT must beat, in the same exports and report."""

    kind = "ptq"

    def quantize(self, student: nn.Module) -> None:
        self.types = plan(student, self.weights, self.embeddings, self.fallback)
        self.fallen = fallen(student, self.types, self.weights)  # refuse a bad width before training

    def finalize(self, student: nn.Module) -> nn.Module:
        if self.types is None:
            raise RuntimeError(f"{type(self).__name__}.finalize before quantize")
        round_weights(student, self.types)
        if self.activations:
            quantize_inputs(student, self.types)
        student.config.update({CONFIG_KEY: self.record()})
        return student.eval()
