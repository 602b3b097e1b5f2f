"""GGUF export: the file read back with the gguf package holds the student, under llama.cpp's names and
types, with its tokenizer; a QAT student's quantized tensors dequantize to exactly its weights; every
refusal is one line and leaves no file."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.export.command import export_dir
from distill.export.gguf_file import FileTypes, resolve_types
from distill.quant.ggml import fake_quantize
from distill.quant.ggml_qat import GGMLPTQPlugin, GGMLQATPlugin
from tests.export.helpers import VOCAB, WIDE, expected, read, saved_student
from tests.student.tiny_models import tiny_model

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize(
    "hf_arch,gguf_arch",
    [("llama", "llama"), ("mistral", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3"), ("gemma", "gemma")],
)
def test_f16_file_holds_the_student_and_its_tokenizer(tmp_path, hf_arch, gguf_arch):
    model = tiny_model(hf_arch, vocab_size=VOCAB)
    student = saved_student(tmp_path / "student", model=model)
    metrics = export_dir(tmp_path, "f16")  # a run dir: student/ inside it
    path = tmp_path / "student.f16.gguf"
    assert metrics["gguf.bytes"] == path.stat().st_size and metrics["gguf.type"] == "f16"
    fields, tensors = read(path)
    assert fields["general.architecture"] == gguf_arch
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert fields[f"{gguf_arch}.block_count"] == 4 and fields[f"{gguf_arch}.embedding_length"] == 64
    assert fields[f"{gguf_arch}.attention.head_count_kv"] == 2
    want = expected(model, gguf_arch)
    assert set(tensors) == set(want)
    for name, (kind, values) in tensors.items():
        assert kind == ("F32" if want[name].ndim == 1 else "F16"), name
        assert torch.equal(values, fake_quantize(want[name], "f32" if kind == "F32" else "f16")), name

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB and all(tokens[i] == t for t, i in tok.get_vocab().items())
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False  # the HF tokenizer adds none either
    assert fields["tokenizer.ggml.token_type"][tok.eos_token_id] == gguf.TokenType.CONTROL
    first_merge = " ".join(tok.backend_tokenizer.to_str().split('"merges":')[1].split('"')[1:4:2])
    assert fields["tokenizer.ggml.merges"][0] == first_merge


def test_chat_template_travels_in_the_metadata(tmp_path):
    student = saved_student(tmp_path / "m")
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    (student / "chat_template.jinja").write_text(template)
    export_dir(student, "q8_0")  # a model dir: the file goes into it
    fields, _ = read(student / "student.q8_0.gguf")
    assert fields["tokenizer.chat_template"] == template


@pytest.mark.parametrize(
    "arch,weights,embeddings,overrides",
    [
        ("llama", "q4_0", "f16", {}),
        ("qwen3", "q8_0", "q8_0", {}),
        ("llama", "tq2_0", "f16", WIDE),
        ("gemma", "q4_0", "q4_0", {}),
    ],
)
def test_qat_student_file_dequantizes_to_exactly_its_weights(tmp_path, arch, weights, embeddings, overrides):
    """The QAT student after a training step and finalize, saved as distill-train saves it, then
    exported: every tensor of the file, dequantized by the gguf package, equals the student's own
    weight (the one it was evaluated with) bit for bit; blocks and embeddings in the trained types."""
    model = tiny_model(arch, vocab_size=VOCAB, **overrides)
    plugin = GGMLQATPlugin(weights=weights, embeddings=embeddings)
    plugin.quantize(model)
    x = torch.randint(0, VOCAB, (2, 16))
    model(input_ids=x, labels=x).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    plain = plugin.finalize(model)
    saved_student(tmp_path / "student", model=plain)
    metrics = export_dir(tmp_path, "auto")  # auto: the type it was trained for, read from config.json
    assert metrics["gguf.type"] == weights and metrics["gguf.embeddings"] == embeddings
    _, tensors = read(tmp_path / f"student.{weights}.gguf")
    want = expected(plain, arch)
    assert set(tensors) == set(want)
    kinds = {}
    for name, (kind, values) in tensors.items():
        kinds.setdefault(kind, []).append(name)
        assert torch.equal(values, want[name]), f"{name} ({kind}) differs from the QAT student's weight"
    assert set(kinds[weights.upper()]) >= {"blk.0.attn_q.weight", "blk.3.ffn_down.weight"}
    assert "token_embd.weight" in kinds[embeddings.upper()]


def test_ptq_export_is_converting_the_full_precision_student(tmp_path):
    """PTQ's finalize and a plain q4_0 export of the full-precision student give the same file values."""
    model = tiny_model("qwen2", vocab_size=VOCAB)
    saved_student(tmp_path / "fp" / "student", model=model)
    export_dir(tmp_path / "fp", "q4_0")
    plugin = GGMLPTQPlugin(weights="q4_0")
    plugin.quantize(model)
    saved_student(tmp_path / "ptq" / "student", model=plugin.finalize(model))
    export_dir(tmp_path / "ptq", "auto")
    _, direct = read(tmp_path / "fp" / "student.q4_0.gguf")
    _, via_ptq = read(tmp_path / "ptq" / "student.q4_0.gguf")
    assert direct.keys() == via_ptq.keys()
    assert all(torch.equal(direct[k][1], via_ptq[k][1]) for k in direct)


def refusal_cases(tmp_path):
    def gpt2():
        return saved_student(tmp_path / "gpt2", "gpt2"), "f16"

    def moe():
        from transformers import MixtralConfig, MixtralForCausalLM

        config = MixtralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=2,
        )  # fmt: skip
        return saved_student(tmp_path / "moe", model=MixtralForCausalLM(config)), "f16"

    def lora():
        from distill.student.lora import apply_lora

        path = tmp_path / "lora"
        saved_student(path)
        apply_lora(tiny_model("llama", vocab_size=VOCAB), r=4).save_pretrained(path)  # adapter_config.json beside it
        return path, "f16"

    def narrow():
        return saved_student(tmp_path / "narrow"), "tq2_0"

    def trained_for_another():
        model = tiny_model("llama", vocab_size=VOCAB)
        plugin = GGMLQATPlugin(weights="q4_0")
        plugin.quantize(model)
        return saved_student(tmp_path / "qat", model=plugin.finalize(model)), "q8_0"

    return {
        "gpt2": (gpt2, "architecture GPT2LMHeadModel is not supported"),
        "moe": (moe, "mixture of experts"),
        "lora": (lora, "unmerged LoRA"),
        "narrow": (narrow, r"tq2_0 quantizes rows in blocks of 256; not a multiple: .*width 64"),
        "qat": (trained_for_another, "trained for q4_0"),
    }


@pytest.mark.parametrize("case", ["gpt2", "moe", "lora", "narrow", "qat"])
def test_refusals_are_one_line_and_write_nothing(tmp_path, case):
    make, message = refusal_cases(tmp_path)[case]
    path, qtype = make()
    before = set(path.iterdir())
    with pytest.raises(DistillError, match=message) as err:
        export_dir(path, qtype)
    assert "\n" not in str(err.value)
    assert set(path.iterdir()) == before  # no .gguf, no temp file


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import distill.export.gguf_file as gguf_file

    student = saved_student(tmp_path / "m")
    export_dir(student, "q8_0")
    good = (student / "student.q8_0.gguf").read_bytes()
    calls = []

    def failing(data, t):
        calls.append(t)
        if len(calls) == 5:
            raise OSError("disk full")
        return encode(data, t)

    encode = gguf_file.encode
    monkeypatch.setattr(gguf_file, "encode", failing)
    with pytest.raises(OSError, match="disk full"):
        export_dir(student, "q8_0")
    assert (student / "student.q8_0.gguf").read_bytes() == good  # the earlier file, intact
    assert not [p for p in student.iterdir() if ".partial" in p.name]


def test_resolve_types():
    assert resolve_types("auto") == FileTypes("f16", "f16")
    trained = {"weights": "tq2_0", "embeddings": "q8_0", "fallback": "q4_0"}
    assert resolve_types(None, None, trained) == FileTypes("tq2_0", "q8_0", "q4_0")
    assert resolve_types("q4_0") == FileTypes("q4_0", "f16")
    assert resolve_types("bf16", "q8_0") == FileTypes("bf16", "bf16")  # float files hold every matrix in their type
    assert resolve_types("f16", None, {"weights": "q4_0", "embeddings": "f16"}) == FileTypes("f16", "f16")
    with pytest.raises(DistillError, match="export.gguf must be"):
        resolve_types("q5_k")
    with pytest.raises(DistillError, match="export.fallback must be"):
        resolve_types("tq2_0", fallback="q3")


def test_fallback_type_for_rows_the_block_does_not_divide(tmp_path):
    """TQ2_0 with a 64-wide model: every block linear falls back (as llama-quantize does, to Q4_0), in
    QAT and in the file alike; the file still holds exactly the QAT student's weights."""
    model = tiny_model("llama", vocab_size=VOCAB, intermediate_size=256)  # down_proj 256 wide: ternary
    plugin = GGMLQATPlugin(weights="tq2_0", fallback="q4_0")
    plugin.quantize(model)
    assert plugin.report()["fallback_layers"] and "model.layers.0.mlp.down_proj" not in plugin.fallen
    saved_student(tmp_path / "student", model=plugin.finalize(model))
    metrics = export_dir(tmp_path, "auto")
    assert metrics["gguf.tensors"] == {"f16": 2, "q4_0": 6 * 4, "tq2_0": 4, "f32": 9}
    _, tensors = read(tmp_path / "student.tq2_0.gguf")
    assert tensors["blk.0.ffn_down.weight"][0] == "TQ2_0" and tensors["blk.0.ffn_up.weight"][0] == "Q4_0"
    from transformers import AutoModelForCausalLM

    want = expected(AutoModelForCausalLM.from_pretrained(tmp_path / "student"), "llama")
    assert all(torch.equal(values, want[name]) for name, (_, values) in tensors.items())
