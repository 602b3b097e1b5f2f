"""QLoRA plugin: 4-bit NF4 base under LoRA adapters, trained through Lightning on CPU."""

from __future__ import annotations

import copy

import bitsandbytes as bnb
import lightning as L
import pytest
import torch
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.quant.qlora import QLoRAPlugin, dequantize, to_linear, to_linear4bit
from distill.student.lora import apply_lora
from distill.teacher.module import Teacher
from tests.student.tiny_models import VOCAB, tiny_model
from tests.trainers import quiet_trainer

# Every linear a multiple of 64: hidden 64, 4 KV heads x 16 (no GQA shrinking k/v to 32), MLP 128.
LLAMA = dict(num_key_value_heads=4, intermediate_size=128)


def student(r: int = 4, seed: int = 0, **overrides):
    """A tiny Llama with LoRA adapters whose B matrices are non-zero (so they shape the logits)."""
    model = apply_lora(tiny_model("llama", seed=seed, **{**LLAMA, **overrides}), r=r, alpha=8)
    torch.manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def quantized(model, **plugin_args):
    plugin = QLoRAPlugin(compute_dtype="float32", **plugin_args)
    plugin.quantize(model)
    return model, plugin


def lora_grads(model, x) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(input_ids=x, use_cache=False).logits.float().pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def worst_relative_error(grads, ref) -> float:
    assert grads.keys() == ref.keys() and ref
    return max(((grads[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref)


def eval_pass(model, x) -> None:
    """What validation does between training steps: eval mode, no grad."""
    model.eval()
    with torch.no_grad():
        model(input_ids=x, use_cache=False)


def linear4bit_layers(model):
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_quantizes_the_frozen_block_linears_only():
    model, plugin = quantized(student())
    layers = linear4bit_layers(model)
    assert len(layers) == 4 * 7  # q k v o gate up down in each of 4 blocks
    assert all(m.weight.quant_type == "nf4" and not m.weight.requires_grad for m in layers)
    assert all(m.support_avx512bf16_for_cpu is False for m in layers)
    # Embeddings and the LM head are untouched (and stay frozen, as LoRA left them).
    inner = model.get_base_model()
    assert type(inner.model.embed_tokens) is torch.nn.Embedding and type(inner.lm_head) is torch.nn.Linear
    assert not inner.lm_head.weight.requires_grad
    report = plugin.report()
    assert report["layers_quantized"] == 28 and report["layers_skipped"] == []
    # 4 bits per weight plus block scales: well under a quarter of fp32.
    assert report["base_bytes_after"] < report["base_bytes_before"] / 4


def test_lora_gradients_after_an_eval_pass_match_a_dequantized_reference():
    """The measured bnb 0.50 pitfall: an eval forward under no_grad repacks the 4-bit weights for
    a CPU inference kernel autograd cannot see through. With the plugin's layers the gradients
    still match an fp32 model whose base is the dequantized NF4 weights."""
    model, _ = quantized(student())
    reference = copy.deepcopy(model)
    assert dequantize(reference) == 28 and not linear4bit_layers(reference)
    x = torch.randint(0, VOCAB, (2, 16))
    ref = lora_grads(reference, x)
    eval_pass(model, x)
    error = worst_relative_error(lora_grads(model, x), ref)
    assert error < 1e-5, f"LoRA gradients off by {error:.2e} after an eval pass"


def test_the_gradient_check_catches_the_repack_bug():
    """Same check with bnb's default (repack enabled): the gradients are wrong, so the test above
    would fail without the fix. Only where bnb repacks (a CPU with AVX512-BF16)."""
    if not bnb.functional.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here, so the bug cannot show")
    model, _ = quantized(student())
    reference = copy.deepcopy(model)
    dequantize(reference)
    for layer in linear4bit_layers(model):
        layer.support_avx512bf16_for_cpu = True  # bitsandbytes' default on this CPU
    x = torch.randint(0, VOCAB, (2, 16))
    ref = lora_grads(reference, x)
    eval_pass(model, x)
    assert all(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear4bit_layers(model))
    error = worst_relative_error(lora_grads(model, x), ref)
    assert error > 0.1, f"expected wrong gradients with the repack, got error {error:.2e}"


def test_gpt2_conv1d_layers_round_trip():
    """GPT-2's Conv1D stores its weight transposed: quantized as a Linear4bit, given back as a
    Conv1D so PEFT merges the adapters with fan_in_fan_out."""
    from transformers.pytorch_utils import Conv1D

    model = apply_lora(tiny_model("gpt2"), r=4)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model, plugin = quantized(model)
    assert plugin.report()["layers_quantized"] == 4 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    x = torch.randint(0, VOCAB, (2, 16))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=x).logits
        final = plugin.finalize(model)
        assert isinstance(final.transformer.h[0].attn.c_attn, Conv1D)
        torch.testing.assert_close(final(input_ids=x).logits, before, rtol=1e-4, atol=1e-4)


def test_layers_that_are_not_multiples_of_64_are_a_clear_error():
    model = student(intermediate_size=96)
    with pytest.raises(DistillError, match=r"multiples of 64.*layers\.0\.mlp\.gate_proj\.base_layer \(64 -> 96\)"):
        QLoRAPlugin().quantize(model)
    assert not linear4bit_layers(model)  # nothing was changed before the error


def test_a_student_without_adapters_is_a_clear_error():
    with pytest.raises(DistillError, match=r"needs LoRA adapters: set student.lora.r > 0"):
        QLoRAPlugin().quantize(tiny_model("llama", **LLAMA))


def test_bad_settings_are_clear_errors():
    for bad in (dict(quant_type="int4"), dict(compute_dtype="float16"), dict(export="gguf")):
        with pytest.raises(DistillError, match="quant=qlora"):
            QLoRAPlugin(**bad)


def test_a_4bit_layer_reloads_from_its_state_dict():
    """Lightning checkpoints hold the packed weights and quant state: a resumed run loads them back."""
    torch.manual_seed(0)
    a = to_linear4bit(torch.nn.Linear(128, 64))
    b = to_linear4bit(torch.nn.Linear(128, 64))
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 128)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    torch.testing.assert_close(to_linear(b).weight, to_linear(a).weight, rtol=0, atol=0)


# -- a short Lightning fit, shared by the tests below --------------------------------


def batches(n: int = 4, seq: int = 17, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, VOCAB, (n, seq), generator=g)
    return [(row[:-1], row[1:]) for row in data]


def batch_loss(module, batch) -> float:
    inputs, targets = (t.unsqueeze(0) if t.ndim == 1 else t for t in batch)
    module.eval()
    with torch.no_grad():
        logits = module.student(input_ids=inputs, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()


@pytest.fixture(scope="module")
def fitted():
    """One QLoRA fit for the tests below; the finalize test, last in the file, merges it in place."""
    model = student()
    teacher = Teacher(tiny_model("llama", seed=1, **LLAMA))
    module = DistillationModule(
        model, Objective({"ce": 1.0, "forward_kl": 0.5}), VOCAB, teacher=teacher, lr=1e-2, max_steps=30
    )
    data = batches()
    before = sum(batch_loss(module, b) for b in data) / len(data)
    module.train()  # Lightning keeps the modes it finds; a real student trains in train mode
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    plugin = QLoRAPlugin("32-true", compute_dtype="float32", export="adapters")
    trainer = quiet_trainer(
        plugins=[plugin], max_steps=30, val_check_interval=10, check_val_every_n_epoch=None, num_sanity_val_steps=1
    )
    # Validation runs every 10 steps: eval passes in between training steps, as in a real run.
    packed = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            packed.update(
                {
                    n: (m.weight.data.clone(), m.weight.quant_state.absmax.clone())
                    for n, m in pl_module.student.named_modules()
                    if isinstance(m, bnb.nn.Linear4bit)
                }
            )

    trainer.callbacks.append(Snapshot())
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(data[:2], batch_size=2))
    after = sum(batch_loss(module, b) for b in data) / len(data)
    return dict(
        trainer=trainer,
        module=module,
        model=model,
        plugin=plugin,
        before=before,
        after=after,
        frozen=frozen,
        lora=lora,
        packed=packed,
        data=data,
    )


def test_fit_lowers_the_loss_and_trains_only_the_adapters(fitted):
    model = fitted["model"]
    assert fitted["after"] < fitted["before"] - 0.3, (fitted["before"], fitted["after"])
    layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(layers) == 28 and layers.keys() == fitted["packed"].keys()
    for name, layer in layers.items():  # still 4-bit, bit for bit the weights it started with
        data, absmax = fitted["packed"][name]
        assert layer.weight.dtype == torch.uint8 and torch.equal(layer.weight.data, data)
        assert torch.equal(layer.weight.quant_state.absmax, absmax)
        assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)  # never repacked
    params = dict(model.named_parameters())
    for name, value in fitted["frozen"].items():  # embeddings, norms, LM head
        if not isinstance(params[name], bnb.nn.Params4bit):
            assert torch.equal(params[name], value), name
    assert all(not torch.equal(params[n], v) for n, v in fitted["lora"].items())


def test_a_checkpoint_resumes_into_a_quantized_student(fitted, tmp_path):
    """Lightning restores a checkpoint before the strategy's ``convert_module``: quantizing the
    student first (the plugin's ``convert_module``; the strategy's later call is then a no-op)
    lets the packed 4-bit weights and their quant state load back."""
    path = tmp_path / "last.ckpt"
    fitted["trainer"].save_checkpoint(path)
    model = student(seed=3)  # other weights: all must come from the checkpoint
    module = DistillationModule(model, Objective({"ce": 1.0}), VOCAB, lr=1e-2, max_steps=30)
    plugin = QLoRAPlugin("32-true", compute_dtype="float32")
    plugin.convert_module(module)
    trainer = quiet_trainer(plugins=[plugin], max_steps=30, limit_val_batches=0)
    trainer.fit(module, DataLoader(fitted["data"], batch_size=2), ckpt_path=path)  # at max_steps: restore only
    assert trainer.global_step == 30
    restored, trained = model.state_dict(), fitted["model"].state_dict()
    assert restored.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(restored[key], value), key


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # PEFT on transformers 5
def test_finalize_gives_a_plain_model_with_the_same_logits(fitted, tmp_path):
    model, plugin = fitted["model"], fitted["plugin"]
    x = torch.stack([b[0] for b in fitted["data"]])
    model.eval()
    with torch.no_grad():
        qlora_logits = model(input_ids=x, use_cache=False).logits
    assert plugin.export_extra(model, tmp_path / "before")["quant.adapters_bytes"] > 0  # from the PEFT model
    final = plugin.finalize(model)
    assert not isinstance(final, PeftModel) and not linear4bit_layers(final)
    assert all(p.dtype == torch.float32 for p in final.parameters())
    with torch.no_grad():
        final_logits = final(input_ids=x, use_cache=False).logits
    torch.testing.assert_close(final_logits, qlora_logits, rtol=1e-4, atol=1e-4)

    final.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, final_logits, rtol=1e-5, atol=1e-5)

    # Adapters only, written after finalize (from the copy it kept) and before (from the PEFT model):
    # both load onto the NF4-dequantized base and give the finalized model's logits.
    plugin.export_extra(final, tmp_path / "after")
    for side in ("before", "after"):
        base = tiny_model("llama", **LLAMA)
        block_linears = [(n, m) for n, m in base.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear)]
        for name, layer in block_linears:
            parent, _, leaf = name.rpartition(".")
            setattr(base.get_submodule(parent), leaf, to_linear(to_linear4bit(layer, compute_dtype=torch.float32)))
        loaded = PeftModel.from_pretrained(base, str(tmp_path / side / "adapters")).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=x).logits, final_logits, rtol=1e-4, atol=1e-4)


def test_dequantize_undoes_a_cpu_repack():
    """A 4-bit layer that bnb did repack (its default on AVX512-BF16 CPUs) still dequantizes right."""
    torch.manual_seed(0)
    layer = to_linear4bit(torch.nn.Linear(128, 64, bias=False), compute_dtype=torch.float32)
    expected = to_linear(layer).weight
    layer.support_avx512bf16_for_cpu = True
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 128))
    if not getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        pytest.skip("bitsandbytes does not repack on this CPU (no AVX512-BF16)")
    torch.testing.assert_close(to_linear(layer).weight, expected, rtol=1e-2, atol=1e-3)


def test_quantizing_a_weightless_layer_first_leaves_real_quantization_working(monkeypatch):
    """bitsandbytes caches its double-quantization code map on the first tensor's device; a meta
    layer first (plan=true, real-shape builders) used to poison it for the rest of the process."""
    import bitsandbytes.functional as bnbf

    def fresh_process() -> None:
        monkeypatch.setattr(bnbf, "name2qmap", {})

    real = torch.nn.Linear(128, 64)
    fresh_process()
    reference = to_linear(to_linear4bit(real)).weight
    fresh_process()
    to_linear4bit(torch.nn.Linear(128, 64, device="meta"))
    assert torch.equal(to_linear(to_linear4bit(real)).weight, reference)
