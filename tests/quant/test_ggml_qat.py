"""QAT in ggml's formats: the student's forward uses exactly ggml's quantized weights while the
optimizer trains the full-precision ones; finalize leaves a plain model holding those weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import parametrize

from distill.errors import DistillError
from distill.quant.ggml import fake_quantize
from distill.quant.ggml_qat import CONFIG_KEY, GGMLPTQPlugin, GGMLQATPlugin
from tests.student.tiny_models import VOCAB, tiny_model

WIDE = dict(hidden_size=256, intermediate_size=512, head_dim=64)  # TQ2_0 blocks are 256 wide


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def expected_weights(model, weights: str, embeddings: str) -> dict[str, torch.Tensor]:
    """Each parameter as the ggml file will hold it, computed on the plain model."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    out = {}
    for name, module in model.named_modules():
        if module is head or module is embed:
            out[name] = fake_quantize(module.weight, embeddings)
        elif isinstance(module, torch.nn.Linear):
            out[name] = fake_quantize(module.weight, weights)
    return out


@pytest.mark.parametrize(
    "arch,weights,overrides", [("llama", "q4_0", {}), ("qwen3", "q8_0", {}), ("llama", "tq2_0", WIDE)]
)
def test_forward_uses_exactly_the_ggml_weights(arch, weights, overrides):
    model = tiny_model(arch, **overrides)
    wanted = expected_weights(model, weights, "f16")
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in reference.named_modules():
            if name in wanted:
                module.weight.copy_(wanted[name])
    plugin = GGMLQATPlugin(weights=weights)
    plugin.quantize(model)
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(logits(model, x), logits(reference, x))
    assert plugin.report()["quantized_layers"] == 7 * 4

    # a training step moves the full-precision originals; the forward stays on ggml's grid
    layer = model.model.layers[0].mlp.down_proj
    before = layer.parametrizations.weight.original.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    after = layer.parametrizations.weight.original.detach()
    assert not torch.equal(before, after)
    assert torch.equal(layer.weight, fake_quantize(after, weights))

    plain = plugin.finalize(model)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert torch.equal(plain.model.layers[0].mlp.down_proj.weight, fake_quantize(after, weights))
    for name, w in expected_weights(plain, weights, "f16").items():
        assert torch.equal(dict(plain.named_modules())[name].weight, w), name  # idempotent: re-quantizes to itself
    assert getattr(plain.config, CONFIG_KEY) == {"weights": weights, "embeddings": "f16", "fallback": None}


def test_tied_embedding_stays_one_weight_in_its_type():
    model = tiny_model("gemma")  # ties the head to the embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight
    plugin = GGMLQATPlugin(weights="q4_0", embeddings="q8_0")
    plugin.quantize(model)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert torch.equal(
        model.model.embed_tokens.weight,
        fake_quantize(model.model.embed_tokens.parametrizations.weight.original, "q8_0"),
    )
    plain = plugin.finalize(model)
    assert plain.lm_head.weight is plain.model.embed_tokens.weight


def test_ptq_rounds_once_after_training():
    model = tiny_model("llama")
    original = model.model.layers[1].self_attn.o_proj.weight.detach().clone()
    plugin = GGMLPTQPlugin(weights="q4_0")
    plugin.quantize(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # training sees full precision
    plain = plugin.finalize(model)
    assert torch.equal(plain.model.layers[1].self_attn.o_proj.weight, fake_quantize(original, "q4_0"))
    assert plugin.name == "ptq_q4_0"


@pytest.mark.parametrize(
    "make,plugin,message",
    [
        (lambda: tiny_model("llama"), GGMLQATPlugin(weights="tq2_0"), "blocks of 256.*width 64"),
        (lambda: tiny_model("gpt2"), GGMLQATPlugin(weights="q4_0"), "Conv1D"),
        (lambda: tiny_model("llama"), GGMLQATPlugin(weights="q4_0", embeddings="q3_k"), "quant.embeddings"),
    ],
)
def test_refuses_in_one_line(make, plugin, message):
    with pytest.raises(DistillError, match=message):
        plugin.quantize(make())


def test_refuses_lora_and_unknown_type():
    from distill.student.lora import apply_lora

    with pytest.raises(DistillError, match="lora.r=0"):
        GGMLQATPlugin(weights="q4_0").quantize(apply_lora(tiny_model("llama"), r=4))
    with pytest.raises(DistillError, match="quant.weights"):
        GGMLQATPlugin(weights="q5_0")


def test_activations_are_quantized_in_training_and_after_finalize():
    from distill.quant.ggml import fake_quantize_activations

    model = tiny_model("llama")
    plugin = GGMLQATPlugin(weights="q4_0", activations=True)
    plugin.quantize(model)
    layer = model.model.layers[0].mlp.down_proj
    seen = []
    layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    x = torch.randint(0, VOCAB, (2, 16))
    model(input_ids=x)
    assert torch.equal(seen[-1], fake_quantize_activations(seen[-1], "q4_0"))  # on the Q8_0 grid
    assert not torch.equal(seen[-1], seen[-1].half().float())  # and not just rounded to fp16
    before = logits(model, x)
    plain = plugin.finalize(model)
    assert torch.equal(logits(plain, x), before)  # the hooks stay: evaluation runs what llama.cpp runs
    assert plugin.report()["activations"] == "llama.cpp CPU"


def test_start_step_trains_in_full_precision_until_switched_on():
    model = tiny_model("llama")
    plain = copy.deepcopy(model)
    plugin = GGMLQATPlugin(weights="q4_0", activations=True, start_step=3)
    plugin.quantize(model)
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(logits(model, x), logits(plain, x))  # weights and inputs as they are before the start
    plugin.switch(True)
    quantized = logits(model, x)
    assert not torch.equal(quantized, logits(plain, x))
    plugin.switch(False)
    finished = plugin.finalize(model)  # baked quantized even where training stopped before the start
    assert torch.equal(logits(finished, x), quantized)
    assert plugin.report()["start_step"] == 3


def test_quantize_from_switches_at_the_optimizer_step_and_refuses_a_start_after_the_end():
    import lightning as L

    from distill.quant.ggml_qat import QuantizeFrom
    from tests.trainers import quiet_trainer

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.student = tiny_model("llama")
            self.seen = []

        def training_step(self, batch, batch_idx):
            layer = self.student.model.layers[0].mlp.down_proj
            self.seen.append(layer.parametrizations.weight[0].enabled)
            return self.student(input_ids=batch, labels=batch).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit(start_step: int, max_steps: int, accumulate: int = 1) -> list[bool]:
        module = Module()
        plugin = GGMLQATPlugin(weights="q4_0", start_step=start_step)
        plugin.quantize(module.student)
        data = torch.utils.data.DataLoader(torch.randint(0, VOCAB, (16, 8)), batch_size=2)
        trainer = quiet_trainer(max_steps=max_steps, accumulate_grad_batches=accumulate, callbacks=plugin.callbacks())
        trainer.fit(module, data)
        return module.seen

    assert fit(start_step=2, max_steps=4) == [False, False, True, True]
    # counted in optimizer steps: two batches per step
    assert fit(start_step=1, max_steps=3, accumulate=2) == [False, False, True, True, True, True]
    with pytest.raises(DistillError, match="start_step=4 is not before trainer.max_steps=4.*ptq_q4_0"):
        fit(start_step=4, max_steps=4)
    assert GGMLQATPlugin(weights="q4_0").callbacks() == []
    assert isinstance(GGMLQATPlugin(weights="q4_0", start_step=1).callbacks()[0], QuantizeFrom)
    with pytest.raises(DistillError, match="quant.start_step must be a non-negative integer"):
        GGMLQATPlugin(weights="q4_0", start_step=-1)
