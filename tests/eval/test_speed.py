"""Speed and size helpers: what they count, and that they leave the model as they found it."""

from __future__ import annotations

import torch

from distill.eval.speed import generation_latency, scoring_throughput, size_on_disk
from tests.student.tiny_models import VOCAB, tiny_model


def test_size_on_disk_counts_weight_files(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    weights = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    assert size_on_disk(tmp_path) == weights
    # 4 bytes per float32 parameter, plus the safetensors header
    assert weights >= 4 * sum(p.numel() for p in model.parameters())


def test_size_on_disk_without_weights_is_the_directory(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 10)
    assert size_on_disk(tmp_path) == 10


def test_scoring_throughput_restores_the_mode():
    model = tiny_model("llama").train()
    batches = [torch.randint(0, VOCAB, (2, 16)) for _ in range(2)]
    rate = scoring_throughput(model, batches)
    assert rate > 0 and model.training


def test_generation_latency_reports_each_number():
    model = tiny_model("llama", eos_token_id=0, pad_token_id=0)
    prompts = [torch.randint(1, VOCAB, (1, 5)) for _ in range(3)]
    out = generation_latency(model, prompts, new_tokens=4)
    assert set(out) == {"ttft_ms", "ms_per_token", "gen_tokens_per_s"}
    assert out["ttft_ms"] > 0 and out["ms_per_token"] >= 0
    assert not model.training
