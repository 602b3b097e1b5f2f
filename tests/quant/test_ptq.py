"""PTQ round-to-nearest: QAT's scheme through torchao's quantize_, weights onto the int grid."""

from __future__ import annotations

import copy

import pytest
import torch
from torchao.quantization import IntxUnpackedToInt8Tensor

from distill.errors import DistillError
from distill.quant.ptq import ptq_rtn
from distill.quant.qat import QATPlugin, dequantized_copy
from distill.student.scratch import build_llama
from tests.student.tiny_models import VOCAB, tiny_model


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def test_rtn_int4_puts_weights_on_the_grid():
    model = tiny_model("llama")
    original = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    quantized = ptq_rtn(model, weight_bits=4, group_size=32)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, original)  # a copy by default
    w = quantized.model.layers[0].mlp.up_proj.weight
    assert isinstance(w, IntxUnpackedToInt8Tensor) and w.block_size == (1, 32)
    # round to nearest on a symmetric grid: scale = max|w| / 7.5 per group of 32, q in [-8, 7]
    # (times 1/scale, as torchao computes it: the group's extreme lands on -7.5 or 7.5 either way)
    groups = original.view(original.shape[0], -1, 32)
    scale = groups.abs().amax(-1, keepdim=True) / 7.5
    q = torch.clamp(torch.round(groups * (1.0 / scale)), -8, 7).view_as(original)
    assert torch.equal(w.qdata.to(q.dtype), q)
    assert not torch.equal(w.dequantize(), original)
    error = (w.dequantize() - original).abs().view_as(groups)
    assert (error <= scale * 0.5 * 1.01).all()  # half a step (scales rounded to fp16)
    assert torch.equal(w.scale, w.scale.half().float())
    assert len(quantized.quant_plan.linears) == 4 * 7 and not quantized.quant_plan.skipped


def test_rtn_matches_torchaos_quantized_forward():
    model = tiny_model("llama")
    quantized = ptq_rtn(model, 4, 32, activations="int8")
    x = torch.randint(0, VOCAB, (2, 12))
    ref = logits(quantized, x)
    torch.testing.assert_close(logits(dequantized_copy(quantized), x), ref, rtol=0, atol=0)
    assert not torch.allclose(ref, logits(model, x), atol=1e-4)  # quantization did change the model
    # one layer by hand: int8 per-token asymmetric input rounding, then the dequantized weight
    layer, h = quantized.model.layers[0].mlp.up_proj, torch.randn(3, 64)
    lo, hi = h.amin(-1, keepdim=True).clamp(max=0), h.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / 255
    zp = torch.clamp(-128 - torch.round(lo / s), -128, 127)
    hq = (torch.clamp(torch.round(h / s) + zp, -128, 127) - zp) * s
    torch.testing.assert_close(
        layer(h), torch.nn.functional.linear(hq, layer.weight.dequantize()), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("bits,group,act", [(4, 32, "int8"), (2, 32, "int8"), (8, None, "int8"), (4, 64, None)])
def test_ptq_and_qat_share_one_scheme(bits, group, act):
    """Before any training, QAT's converted model is exactly the PTQ model: apples to apples."""
    model = tiny_model("llama")
    ptq = ptq_rtn(model, bits, group, act)
    plugin = QATPlugin(weight_bits=bits, group_size=group, activations=act)
    student = copy.deepcopy(model)
    plugin.quantize(student)
    plugin.finalize(student)
    for name in ptq.quant_plan.linears:
        a, b = ptq.get_submodule(name).weight, plugin.quantized.get_submodule(name).weight
        assert torch.equal(a.qdata, b.qdata) and torch.equal(a.scale, b.scale), name
        assert a.activation_quantization == b.activation_quantization


def test_ptq_checks_group_sizes_like_qat():
    model = build_llama(vocab_size=VOCAB, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=80)
    with pytest.raises(DistillError, match="in_features 80"):
        ptq_rtn(model, 4, 32)
    quantized = ptq_rtn(model, 4, 32, skip_indivisible=True)
    assert quantized.quant_plan.skipped == {"model.layers.0.mlp.down_proj": 80}
    assert not isinstance(quantized.model.layers[0].mlp.down_proj.weight, IntxUnpackedToInt8Tensor)
