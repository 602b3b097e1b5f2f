"""QAT plugin: torchao fake quantization in every intended layer, trained through Lightning on CPU,
converted to real quantized weights that evaluate and export as a plain HF model."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader
from torchao.quantization import IntxUnpackedToInt8Tensor
from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear
from transformers import AutoModelForCausalLM

from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.quant.qat import PRESETS, QATPlugin
from distill.student.scratch import build_llama
from distill.teacher.module import Teacher
from tests.student.tiny_models import VOCAB, tiny_model
from tests.trainers import quiet_trainer


def linears(model, head=False):
    skip = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and (head or m is not skip)}


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_fake_quant_in_every_intended_layer(preset):
    model = tiny_model("llama")
    names = set(linears(model))
    plugin = QATPlugin(**PRESETS[preset])
    plugin.quantize(model)
    for name, module in model.named_modules():
        if name in names:
            assert isinstance(module, FakeQuantizedLinear), name
            assert module.weight_fake_quantizer.config.dtype == plugin.scheme.weight_dtype
            assert module.activation_fake_quantizer is not None  # every preset quantizes activations to int8
    assert not isinstance(model.lm_head, FakeQuantizedLinear)  # the head only when asked
    assert plugin.report()["quantized_layers"] == len(names) == 4 * 7 and plugin.report()["skipped"] == {}
    assert plugin.name == preset


def tied_llama():
    torch.manual_seed(0)
    return build_llama(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=2)  # tied embeddings


def test_lm_head_and_embeddings_when_asked(tmp_path):
    model = tied_llama()
    plugin = QATPlugin(weight_bits=4, quantize_lm_head=True, quantize_embeddings=True)
    plugin.quantize(model)
    assert isinstance(model.lm_head, FakeQuantizedLinear)
    assert isinstance(model.model.embed_tokens, FakeQuantizedEmbedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one tied parameter
    final = plugin.finalize(model)
    assert final.lm_head.weight is final.model.embed_tokens.weight
    q = plugin.quantized.lm_head.weight
    torch.testing.assert_close(final.lm_head.weight, q.dequantize(), rtol=0, atol=0)
    final.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.lm_head.weight, q.dequantize())
    with pytest.raises(DistillError, match="share one weight"):
        QATPlugin(quantize_lm_head=True).quantize(tied_llama())


def test_indivisible_group_size_errors_or_is_listed(caplog):
    model = build_llama(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=80)
    with pytest.raises(DistillError, match=r"model\.layers\.0\.mlp\.down_proj \(in_features 80\)"):
        QATPlugin(group_size=32).quantize(model)
    plugin = QATPlugin(group_size=32, skip_indivisible=True)
    with caplog.at_level(logging.WARNING, logger="distill.quant.qat"):
        plugin.quantize(model)
    skipped = {f"model.layers.{i}.mlp.down_proj": 80 for i in range(2)}
    assert plugin.report()["skipped"] == skipped
    assert "model.layers.1.mlp.down_proj (in_features 80)" in caplog.text
    for name in skipped:
        assert type(model.get_submodule(name)) is torch.nn.Linear  # left in full precision
    assert isinstance(model.model.layers[0].mlp.up_proj, FakeQuantizedLinear)
    final = plugin.finalize(model)
    for name in skipped:  # still full precision after convert, and in the exported model
        assert type(plugin.quantized.get_submodule(name).weight) is torch.nn.Parameter
        assert torch.equal(final.get_submodule(name).weight, model.get_submodule(name).weight)


def test_unsupported_layers_are_refused():
    with pytest.raises(DistillError, match="Conv1D"):  # GPT-2 has no nn.Linear blocks
        QATPlugin().quantize(tiny_model("gpt2"))


def batches(n=8, seq=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, seq + 1), generator=g)
    return DataLoader(list(zip(x[:, :-1], x[:, 1:])), batch_size=4)


def _fit_tiny(plugin=None):
    """40 steps of KD on a tiny Llama pair; returns (student, module, loss on a batch before, after)."""
    teacher, student = tiny_model("llama", seed=1), tiny_model("llama")  # untied head: 4 x 7 linears + head
    module = DistillationModule(
        student, Objective({"forward_kl": 1.0, "ce": 0.5}), VOCAB, teacher=Teacher(teacher), lr=1e-2, max_steps=40
    )
    data = batches()
    x, y = next(iter(data))
    objective = lambda: module.loss(module.student_outputs(x), module.teacher_outputs(x, None), y)["loss"].item()  # noqa: E731
    before = objective()
    precision = {"plugins": [plugin]} if plugin is not None else {"precision": "bf16-mixed"}
    trainer = quiet_trainer(max_steps=40, **precision)
    trainer.fit(module, data)
    student.eval()
    return student, x, before, objective()


def test_lightning_fit_lowers_the_loss_and_finalizes_to_an_hf_model(tmp_path):
    plugin = QATPlugin(precision="bf16-mixed", weight_bits=4, group_size=32)
    student, x, before, after = _fit_tiny(plugin)
    assert isinstance(student.model.layers[0].mlp.up_proj, FakeQuantizedLinear)  # trained with fake quant
    # the reference, in the same test: the same fit in full precision (measured: 2.46 -> 1.60; QAT 4-bit -> 1.94)
    _, _, _, after_full = _fit_tiny()
    assert after < before and before - after >= 0.5 * (before - after_full), (before, after, after_full)

    fake = logits(student, x)
    final = plugin.finalize(student)
    w = plugin.quantized.model.layers[0].mlp.up_proj.weight
    assert isinstance(w, IntxUnpackedToInt8Tensor) and w.qdata.min() >= -8 and w.qdata.max() <= 7
    quant = logits(final, x)
    torch.testing.assert_close(quant, logits(plugin.quantized, x), rtol=0, atol=0)  # same forward as torchao's
    assert (quant - fake).abs().max() < 0.05 * fake.abs().max()  # fp16 scales flip a few roundings, no more
    # exactly int x scale
    torch.testing.assert_close(final.model.layers[0].mlp.up_proj.weight, w.dequantize(), rtol=0, atol=0)

    final.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    for name in linears(final):
        assert torch.equal(reloaded.get_submodule(name).weight, final.get_submodule(name).weight), name

    metrics = plugin.export_extra(student, tmp_path)
    assert (tmp_path / "packed" / "quantized.safetensors").exists()
    assert 0 < metrics["quant.packed_bytes"] < metrics["quant.hf_bytes"]


def test_weight_only_finalize_is_plain_linear():
    model = tiny_model("llama")
    plugin = QATPlugin(weight_bits=8, group_size=None, activations=None)
    plugin.quantize(model)
    x = torch.randint(0, VOCAB, (2, 12))
    final = plugin.finalize(model)
    layer = final.model.layers[0].self_attn.q_proj
    assert type(layer) is torch.nn.Linear and not layer._forward_pre_hooks  # no activation rounding
    assert plugin.quantized.model.layers[0].self_attn.q_proj.weight.block_size == (1, 64)  # per channel
    torch.testing.assert_close(logits(final, x), logits(plugin.quantized, x), rtol=0, atol=0)
