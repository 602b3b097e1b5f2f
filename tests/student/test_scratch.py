"""student=scratch: any HF causal-LM family from flat sizes, presets, overrides, the unchanged default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from distill.errors import DistillError
from distill.run.student import OWN_TOKENIZER
from distill.student.scratch import KNOWN, MOE, PRESETS, build_llama, scratch_student

VOCAB = 96
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_seq_len=16)
CONFIG = Path(__file__).parents[2] / "configs" / "student"


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(architecture: str, **overrides):
    kw = {**TINY, **overrides}
    if architecture == "gpt2":
        kw["num_kv_heads"] = None
    if architecture in MOE:
        kw.update(num_experts=4, experts_per_token=2)
    torch.manual_seed(0)
    return scratch_student(None, VOCAB, architecture=architecture, **kw)


@pytest.mark.parametrize("architecture", KNOWN)
def test_every_family_builds_runs_and_round_trips(architecture, tmp_path):
    model = tiny(architecture).eval()
    c = model.config
    assert c.model_type == architecture
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (32, 2, 4)  # mapped onto the family's keys
    assert model.get_output_embeddings().weight.shape[0] == VOCAB == model.get_input_embeddings().weight.shape[0]
    if getattr(c, "head_dim", None) is not None:
        assert c.head_dim == 8  # not the family default (Qwen3 128, Gemma 256)
    if architecture in MOE:
        assert c.num_experts_per_tok == 2 and (getattr(c, "num_local_experts", None) or c.num_experts) == 4
    tokens = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        logits = model(tokens).logits
    assert logits.shape == (2, 8, VOCAB) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(tokens).logits, logits)


# The counts documented next to PRESETS (Llama, tied embeddings, vocab 4096), measured on the meta device.
@pytest.mark.parametrize(
    "preset,count", [("1m", 1_058_016), ("5m", 5_065_472), ("20m", 19_275_648), ("100m", 102_258_432)]
)
def test_presets_have_the_documented_sizes(preset, count):
    with torch.device("meta"):
        model = scratch_student(None, 4096, preset=preset)
    assert n_params(model) == count
    assert model.config.hidden_size == PRESETS[preset]["hidden_size"]


def test_explicit_sizes_win_over_the_preset():
    with torch.device("meta"):
        model = scratch_student(None, 4096, preset="20m", num_layers=2, num_kv_heads=2, intermediate_size=512)
    c = model.config
    assert (c.hidden_size, c.num_attention_heads) == (384, 6)  # from the preset
    assert (c.num_hidden_layers, c.num_key_value_heads, c.intermediate_size) == (2, 2, 512)  # overrides


def test_extra_config_reaches_the_family_config():
    model = tiny("qwen2_moe", shared_expert_intermediate_size=16, rms_norm_eps=1e-5)
    assert model.config.shared_expert_intermediate_size == 16 and model.config.rms_norm_eps == 1e-5
    rope = OmegaConf.create({"rope_type": "default", "rope_theta": 500000.0})  # as Hydra passes nested values
    assert tiny("llama", rope_parameters=rope).config.rope_parameters["rope_theta"] == 500000.0


def test_default_is_todays_llama_student():
    ours, old = scratch_student(None, 4096), build_llama(4096)
    assert type(ours) is type(old) and ours.config.to_dict() == old.config.to_dict()
    assert n_params(ours) == n_params(old)
    # and the yaml with everything left null builds the same model
    cfg = OmegaConf.load(CONFIG / "scratch.yaml")
    cfg.max_seq_len = 256
    for key in OWN_TOKENIZER:  # the student's own tokenizer: read by the run, never the builder
        cfg.pop(key)
    from_yaml = instantiate(cfg)(teacher=None, vocab_size=4096)
    assert from_yaml.config.to_dict() == old.config.to_dict()


def test_the_teachers_eos_is_used():
    teacher = build_llama(VOCAB, hidden_size=16, num_layers=1, num_heads=2, eos_token_id=3)
    student = scratch_student(teacher, VOCAB, architecture="gpt2", hidden_size=16, num_layers=1, num_heads=2)
    assert student.config.eos_token_id == 3 and student.config.pad_token_id == 3


def test_another_hf_family_goes_through_the_standard_names():
    model = scratch_student(None, VOCAB, architecture="gpt_neox", **{**TINY, "num_kv_heads": None})
    assert model.config.model_type == "gpt_neox" and model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(architecture="nope"), "unknown architecture"),
        (dict(architecture="vit"), "not a causal language model"),
        (dict(architecture="bert"), "attends to later tokens"),
        (dict(preset="3m"), "unknown preset"),
        (dict(num_heads=3), "not divisible by num_heads"),
        (dict(num_kv_heads=3), "not divisible by num_kv_heads"),
        (dict(architecture="gpt2", num_kv_heads=2), "no grouped-query"),
        (dict(num_experts=4), "mixture-of-experts"),
        (dict(architecture="mixtral", num_experts=2, experts_per_token=3), "experts_per_token <= num_experts"),
        (dict(hidden_size=0), "integers >= 1"),
    ],
)
def test_bad_choices_are_one_line_errors(kwargs, match):
    kw = {**dict(hidden_size=32, num_layers=1, num_heads=4, max_seq_len=16), **kwargs}
    with pytest.raises(DistillError, match=match) as err:
        scratch_student(None, VOCAB, **kw)
    assert "\n" not in str(err.value)
