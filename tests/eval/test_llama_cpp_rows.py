"""distill-eval's llama.cpp rows: which GGUF files, which model each came from (by the tokenizer it
carries), and, with llama.cpp installed, its perplexity on the same rows as the PyTorch model's."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from distill.errors import DistillError
from distill.eval.compare_table import llama_cpp_section
from distill.eval.llama_cpp_rows import auto_files, model_of, named_files, tokenizer_of
from distill.export.command import export_dir
from tests.student.tiny_models import tiny_model_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two tiny models with BPEs of 300 and 280 tokens (the smaller one a prefix of the larger), each
    exported to F16 as distill-export writes it for a run dir: <run>/student.f16.gguf."""
    root = tmp_path_factory.mktemp("gguf")
    dirs = {name: tiny_model_dir(root / name / "student", size) for name, size in (("a", 300), ("b", 280))}
    for d in dirs.values():
        export_dir(d.parent, "f16")
    return dirs


def tokenizers(dirs):
    return {name: AutoTokenizer.from_pretrained(d) for name, d in dirs.items()}


def test_auto_finds_the_exports_beside_each_model(exported, tmp_path):
    files = auto_files(exported)
    assert files == {
        "a.f16": exported["a"].parent / "student.f16.gguf",
        "b.f16": exported["b"].parent / "student.f16.gguf",
    }
    assert auto_files({"c": tmp_path}) == {}


def test_named_files_are_checked_before_anything_runs(exported, tmp_path):
    assert named_files(None, exported) == {} and named_files([], exported) == {}
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(DistillError, match=r"llama_cpp.files.model: .* is not a .gguf file"):
        named_files([str(tmp_path / "model.bin")], exported)
    with pytest.raises(DistillError, match="expected auto, a list"):
        named_files(3, exported)


def test_each_file_is_matched_to_the_model_whose_tokenizer_it_carries(exported):
    toks = tokenizers(exported)
    files = auto_files(exported)
    # b's 280 tokens are the first 280 of a's: a prefix must not count as the same tokenizer, either way
    assert tokenizer_of("a.f16", files["a.f16"], toks, reference="b") == ["a"]
    assert tokenizer_of("b.f16", files["b.f16"], toks, reference="a") == ["b"]
    with pytest.raises(DistillError, match="carries a tokenizer that none of the models has"):
        tokenizer_of("a.f16", files["a.f16"], {"b": toks["b"]}, reference="b")
    # models sharing one tokenizer: the reference first; where an auto-found file lies names its model
    assert tokenizer_of("a.f16", files["a.f16"], {"t": toks["a"], "a": toks["a"]}, reference="t") == ["t", "a"]
    assert model_of("a.f16", {"t": "x", "a": "y"}) == "a" and model_of("a/student.q4_0", {"a": "y"}) is None


def test_the_section_shows_the_file_beside_its_model():
    rows = {"s.q4_0": {"model": "s", "size_bytes": 2**20, "val_ppl": 40.5, "gen_tokens_per_s": 300.0,
                       "ttft_ms": 1.5, "threads": 2}}  # fmt: skip
    lines = llama_cpp_section(rows, {"s": {"val_ppl": 40.0}})
    assert "| s.q4_0 | s | 1.00 MiB | 40.500 | 40.000 | 300.0 | 1.50 | 2 |" in lines
    assert llama_cpp_section({}, {}) == []


@pytest.mark.deploy
def test_llama_cpp_perplexity_equals_the_pytorch_models(exported):
    pytest.importorskip("llama_cpp", reason="llama.cpp not installed: pip install 'distill[deploy]'")
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from distill.eval.llama_cpp_rows import gguf_rows
    from distill.eval.metrics import evaluate

    toks = tokenizers(exported)
    rows = torch.randint(1, 280, (4, 33), generator=torch.Generator().manual_seed(0))
    batches = [(rows[:, :-1], rows[:, 1:])]
    model = AutoModelForCausalLM.from_pretrained(exported["a"])
    ours = evaluate({"a": model}, batches, len(toks["a"]), reference="a")["a"]["val_ppl"]
    speed = OmegaConf.create({"new_tokens": 4, "rounds": 1})
    prompts = {name: [tok("def f(x):")["input_ids"]] for name, tok in toks.items()}
    out = gguf_rows(auto_files(exported), exported, toks, "a", ["a"], batches, prompts, speed, threads=1)
    assert math.isclose(out["a.f16"]["val_ppl"], ours, rel_tol=5e-3)  # F16 weights: the 0.5%
    assert "val_ppl" not in out["b.f16"] and out["b.f16"]["model"] == "b"  # not the reference's tokens
    for row in out.values():
        assert row["gen_tokens_per_s"] > 0 and row["ttft_ms"] > 0 and row["threads"] == 1 and row["size_bytes"] > 0
