import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, OPTConfig, OPTForCausalLM

from distill.errors import DistillError
from distill.student.calibration import calibration_batches
from distill.student.depth import block_importance, depth_pruned
from tests.student.tiny_models import CONFIGS, VOCAB, tiny_model

KINDS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2"]
SMALL = dict(calibration_samples=6, calibration_batch_size=3)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).integers(0, VOCAB, size=(12, 17), dtype=np.int32)


def fresh_params(kind: str, layers: int) -> int:
    """Parameter count of a freshly built model of the same shape with ``layers`` blocks."""
    layer_key = "n_layer" if kind == "gpt2" else "num_hidden_layers"
    config = AutoConfig.for_model(kind, vocab_size=VOCAB, **{**CONFIGS[kind], layer_key: layers})
    return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def make_identity(model, i: int) -> None:
    """Zero block i's output projections: the residual stream passes through it unchanged."""
    if model.config.model_type == "gpt2":
        block = model.transformer.h[i]
        projections = [block.attn.c_proj, block.mlp.c_proj]
    else:
        block = model.model.layers[i]
        projections = [block.self_attn.o_proj, block.mlp.down_proj]
    with torch.no_grad():
        for p in projections:
            p.weight.zero_()
            if p.bias is not None:
                p.bias.zero_()


@pytest.mark.parametrize("kind,final_norm", [("llama", "model.norm"), ("gpt2", "transformer.ln_f")])
def test_importance_is_one_minus_token_mean_cosine_of_hidden_states(kind, final_norm, data):
    model = tiny_model(kind)
    batches = calibration_batches(data, samples=5, batch_size=2)
    importance = block_importance(model, batches)
    # hidden_states[i] is block i's input and hidden_states[i + 1] its output, except that HF
    # reports the last one after the final norm: with that norm removed, all n are block outputs.
    parent, name = final_norm.rsplit(".", 1)
    setattr(model.get_submodule(parent), name, torch.nn.Identity())
    with torch.no_grad():
        hs = model(input_ids=torch.cat(batches), output_hidden_states=True).hidden_states
    cos = [torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1).mean().item() for i in range(4)]
    np.testing.assert_allclose(importance, [1 - c for c in cos], rtol=1e-4, atol=1e-6)
    assert all(v > 1e-3 for v in importance)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_identity_block_has_zero_importance_and_is_dropped_first(kind, data):
    model = tiny_model(kind)
    make_identity(model, 2)
    student = depth_pruned(model, VOCAB, data, num_layers=3, **SMALL)
    importance = student.pruning_report["importance"]
    assert abs(importance[2]) < 1e-5 and min(importance[:2] + importance[3:]) > 1e-3
    assert student.pruning_report["kept_layers"] == [0, 1, 3]


@pytest.mark.parametrize("kind", KINDS)
def test_prune_save_reload(kind, data, tmp_path):
    teacher = tiny_model(kind)
    student = depth_pruned(teacher, VOCAB, data, num_layers=2, **SMALL)
    report = student.pruning_report
    kept = report["kept_layers"]
    assert len(kept) == 2 and kept == sorted(kept)
    assert report["method"] == "depth" and len(report["importance"]) == 4
    expected = fresh_params(kind, 2)
    assert report["params_before"] == fresh_params(kind, 4) and report["params_after"] == expected
    # The kept blocks are the teacher's, renumbered.
    layers = "transformer.h" if kind == "gpt2" else "model.layers"
    for new, old in enumerate(kept):
        s, t = student.get_submodule(layers)[new].state_dict(), teacher.get_submodule(layers)[old].state_dict()
        assert all(torch.equal(s[k], t[k]) for k in t)
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 2
    assert sum(p.numel() for p in loaded.parameters()) == expected
    ids = torch.from_numpy(data[:2, :-1].astype(np.int64))
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits, student.eval()(input_ids=ids).logits)


def test_target_params_picks_the_deepest_student_that_fits(data):
    teacher = tiny_model("llama")
    sizes = {k: fresh_params("llama", k) for k in range(1, 5)}
    for target, depth in [(sizes[2], 2), (sizes[3] - 1, 2), (sizes[3], 3), (sizes[1], 1), (10 * sizes[4], 4)]:
        student = depth_pruned(teacher, VOCAB, data, target_params=target, **SMALL)
        assert student.config.num_hidden_layers == depth, target
        assert student.pruning_report["params_after"] == sizes[depth] <= target


def test_impossible_target_is_one_clear_line(data):
    teacher = tiny_model("llama")
    with pytest.raises(DistillError, match="cannot reach target_params") as err:
        depth_pruned(teacher, VOCAB, data, target_params=fresh_params("llama", 1) - 1)
    assert "\n" not in str(err.value)


def test_default_keeps_half_the_layers(data):
    student = depth_pruned(tiny_model("llama"), VOCAB, data, **SMALL)
    assert student.config.num_hidden_layers == 2
    one = tiny_model("llama", num_hidden_layers=1)
    assert depth_pruned(one, VOCAB, data, **SMALL).config.num_hidden_layers == 1


@pytest.mark.parametrize("kwargs", [dict(num_layers=2, target_params=10**6), dict(num_layers=0), dict(num_layers=5)])
def test_bad_depth_settings_are_user_errors(kwargs, data):
    with pytest.raises(DistillError):
        depth_pruned(tiny_model("llama"), VOCAB, data, **kwargs)


def test_needs_a_teacher_and_calibration_data(data):
    with pytest.raises(DistillError, match="teacher"):
        depth_pruned(None, VOCAB, data)
    with pytest.raises(DistillError, match="calibration"):
        depth_pruned(tiny_model("llama"), VOCAB, None)
    with pytest.raises(DistillError, match="vocabulary"):
        depth_pruned(tiny_model("llama", vocab_size=64), VOCAB, data)


def test_unsupported_architecture_names_the_supported_ones(data):
    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=32,
    )
    with pytest.raises(DistillError, match="llama, mistral, qwen2, qwen3, gemma, gemma2, gpt2.*'opt'"):
        depth_pruned(OPTForCausalLM(config), VOCAB, data, num_layers=1)


def test_calibration_seed_makes_the_scores_reproducible(data):
    teacher = tiny_model("llama")
    runs = [
        depth_pruned(teacher, VOCAB, data, num_layers=2, seed=s, calibration_samples=3).pruning_report
        for s in (0, 0, 1)
    ]
    assert runs[0]["importance"] == runs[1]["importance"] != runs[2]["importance"]


def test_logs_importance_and_kept_layers(data, caplog):
    with caplog.at_level(logging.INFO, logger="distill.student.depth"):
        report = depth_pruned(tiny_model("llama"), VOCAB, data, num_layers=3, **SMALL).pruning_report
    assert "importance" in caplog.text and str(report["kept_layers"]) in caplog.text


def test_config_builds_a_half_depth_student_through_hydra(data):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    depth = OmegaConf.load(Path(__file__).parents[2] / "configs/student/depth.yaml")
    cfg = OmegaConf.create({"seed": 3, "student": depth})
    assert cfg.student.seed == 3
    cfg.student.calibration_samples = 4
    student = instantiate(cfg.student)(teacher=tiny_model("llama"), vocab_size=VOCAB, train_blocks=data)
    assert student.config.num_hidden_layers == 2
