"""Post-training quantization baselines for a trained student, in QAT's exact scheme.

``ptq_rtn`` is round-to-nearest through torchao's ``quantize_`` with the very config whose convert
step ends QAT (``Scheme.linear_config``), on the same layers (``plan_layers``) and with the same
fp16 scales, so "QAT vs PTQ" compares training, not schemes. The result is a torchao model
(``IntxUnpackedToInt8Tensor`` weights): evaluate it directly, ``dequantized_copy`` it for a
``save_pretrained`` export, ``export.save_packed`` it for the packed checkpoint.

GPTQ is not provided, because no maintained implementation runs here (torchao 0.18, torch 2.13,
CPU), and we don't write our own:
- torchao's only GPTQ in 0.18 is ``torchao.prototype.gptq.GPTQConfig``; its ``gptq_quantize``
  asserts ``device.type == "cuda"`` ("GPTQ only supports CUDA currently"), and it only targets
  ``Int4WeightOnlyConfig`` (ValueError "mslk is not installed"), ``Int8WeightOnlyConfig`` (per row;
  run here: observe works, convert raises the CUDA assertion) and NVFP4, not
  the int8-activation / intx-weight scheme QAT uses. The older ``Int8DynActInt4WeightGPTQQuantizer``
  is no longer in torchao.
- gptqmodel / auto-gptq / optimum are not installed, and there is no network to install them.
"""

from __future__ import annotations

import copy
import logging

from torch import nn
from torchao.quantization import quantize_

from distill.quant.export import SCALE_DTYPE
from distill.quant.qat import (
    Plan,
    QATPlugin,
    Scheme,
    dequantized_copy,
    named,
    plan_layers,
    round_scales,
    verify_quantized,
)

log = logging.getLogger(__name__)


def ptq_rtn(
    model: nn.Module,
    weight_bits: int = 4,
    group_size: int | None = 32,
    activations: str | None = "int8",
    *,
    quantize_embeddings: bool = False,
    quantize_lm_head: bool = False,
    skip_indivisible: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Round-to-nearest quantization of ``model`` (a copy unless ``inplace``): symmetric
    ``weight_bits`` weights per group of ``group_size`` (None: per channel), int8 per-token
    activations if asked. Returns the torchao-quantized model, its plan as ``model.quant_plan``."""
    scheme = Scheme(int(weight_bits), group_size or None, activations)
    model = model if inplace else copy.deepcopy(model)
    plan = plan_layers(
        model,
        scheme,
        quantize_embeddings=quantize_embeddings,
        quantize_lm_head=quantize_lm_head,
        skip_indivisible=skip_indivisible,
    )
    apply_rtn(model, scheme, plan)
    model.quant_plan = plan
    return model.eval()


def apply_rtn(model: nn.Module, scheme: Scheme, plan: Plan) -> None:
    quantize_(model, scheme.linear_config(), filter_fn=named(set(plan.linears)))
    if plan.embeddings:
        quantize_(model, scheme.embedding_config(), filter_fn=named(set(plan.embeddings)))
    round_scales(model, SCALE_DTYPE)
    verify_quantized(model, scheme, plan)


class PTQPlugin(QATPlugin):
    """``quant=ptq_int8_int4|ptq_int8_int2``: the baseline QAT must beat. Training sees no fake
    quantization; ``finalize`` applies round-to-nearest in the same scheme to the trained student,
    and the exports and report are QAT's, so the two runs differ only in training."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # named from the start: the memory estimate, logged before ``quantize``, reads the name
        # (a "qat_" name would count fake-quantized weight copies that PTQ training never makes)
        self.name = self.scheme.name.replace("qat_", "ptq_", 1)

    def quantize(self, student: nn.Module) -> None:
        # plan now, so a group size that does not fit fails before training, not after
        self.plan = plan_layers(
            student,
            self.scheme,
            quantize_embeddings=self.quantize_embeddings,
            quantize_lm_head=self.quantize_lm_head,
            skip_indivisible=self.skip_indivisible,
        )
        log.info(
            "PTQ %s: training in full precision; %d linear layer(s) rounded to nearest after training",
            self.name,
            len(self.plan.linears),
        )

    def finalize(self, student: nn.Module) -> nn.Module:
        if self.plan is None:
            raise RuntimeError("PTQPlugin.finalize before quantize")
        self.quantized = copy.deepcopy(student)
        apply_rtn(self.quantized, self.scheme, self.plan)
        self.quantized.eval()
        return dequantized_copy(self.quantized).eval()
