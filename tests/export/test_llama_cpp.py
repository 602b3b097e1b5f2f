"""The exported files in llama.cpp itself (llama-cpp-python, the ``deploy`` extra; skipped without it):
F16 logits equal the PyTorch student's to fp16 tolerance for every architecture, a QAT Q4_0 / Q8_0 /
TQ2_0 student's perplexity in llama.cpp equals its own in distill within 0.5%, and greedy generation
starts with the same tokens."""

from __future__ import annotations

import pytest
import torch

from distill.export.command import export_dir
from distill.quant.ggml import fake_quantize
from distill.quant.ggml_qat import GGMLQATPlugin
from tests.export.helpers import VOCAB, WIDE, saved_student
from tests.student.tiny_models import tiny_model

pytestmark = pytest.mark.deploy
llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp not installed: pip install 'distill[deploy]'")

from distill.export import llama_cpp as runtime  # noqa: E402

SEQ = 48


def tokens(seed: int = 0, n: int = SEQ) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def torch_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


def fp16_weights(model):
    """The model as the F16 file holds it: every matrix rounded to fp16, 1-D tensors exact."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(fake_quantize(p, "f16"))
    return model


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma"])
def test_f16_logits_match_pytorch(tmp_path, arch):
    model = fp16_weights(tiny_model(arch, vocab_size=VOCAB, max_position_embeddings=128))
    with torch.no_grad():  # a trained model's scale: random init gives near-uniform logits that compare nothing
        model.get_output_embeddings().weight.mul_(20)
    saved_student(tmp_path, model=model)
    export_dir(tmp_path, "f16")
    llm = runtime.load(tmp_path / "student.f16.gguf", n_ctx=64, threads=2)
    for seed in range(3):
        ids = tokens(seed)
        ours, theirs = torch_logits(model, ids), torch.from_numpy(runtime.logits(llm, ids))
        assert theirs.shape == ours.shape
        scale = ours.abs().max()
        # llama.cpp computes with fp16 activations in places (KV cache, F16 matmul inputs): measured
        # 0.05-0.08% of the largest logit; a Llama export without the q/k permutation is off by 1.4%
        assert (theirs - ours).abs().max() <= 2e-3 * scale, f"{arch}: max diff {(theirs - ours).abs().max():.4g}"
        assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() >= 0.95
    prompt = tokens(7, 8)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt) :].tolist()
    assert runtime.greedy(llm, prompt, 8)[:4] == out[:4]


@pytest.mark.parametrize("weights,overrides", [("q4_0", {}), ("q8_0", {}), ("tq2_0", WIDE)])
def test_qat_perplexity_in_llama_cpp_equals_distills(tmp_path, weights, overrides):
    from distill.eval.metrics import evaluate

    model = tiny_model("llama", vocab_size=VOCAB, max_position_embeddings=128, **overrides)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    plugin = GGMLQATPlugin(weights=weights)
    plugin.quantize(model)
    plain = plugin.finalize(model)
    saved_student(tmp_path, model=plain)
    export_dir(tmp_path, "auto")
    rows = torch.tensor([tokens(s, SEQ + 1) for s in range(4)])
    batches = [(rows[:, :-1], rows[:, 1:])]
    ours = evaluate({"student": plain}, batches, VOCAB, reference="student")["student"]["val_ppl"]
    llm = runtime.load(tmp_path / f"student.{weights}.gguf", n_ctx=64, threads=2)
    theirs = runtime.perplexity(llm, batches, VOCAB)["val_ppl"]
    # the weights are identical; what remains is llama.cpp's Q8_0 / fp16 activations
    assert abs(theirs / ours - 1) < 0.005, (weights, ours, theirs)
