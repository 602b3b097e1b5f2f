"""Width pruning (Minitron): sizes, weight layouts and importance ranking on every supported architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from distill.errors import DistillError
from distill.student.calibration import calibration_batches
from distill.student.width import Dims, Keep, importance, slice_model, teacher_dims, top, width_pruned

from .tiny_models import VOCAB, tiny_model

KINDS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2"]
LLAMA_LIKE = [k for k in KINDS if k != "gpt2"]
CALIB = dict(calibration_samples=8, calibration_batch_size=4)
WIDTH_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "student" / "width.yaml"


@pytest.fixture(scope="module")
def blocks() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, (8, 17))


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids, use_cache=False).logits


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(config) -> int:
    """Parameter count written out from the config alone (not from the pruning code)."""
    if config.model_type == "gpt2":
        e, v, p = config.n_embd, config.vocab_size, config.n_positions
        i = config.n_inner or 4 * e
        block = (e * 3 * e + 3 * e) + (e * e + e) + (e * i + i) + (i * e + e) + 4 * e
        return (v + p) * e + config.num_hidden_layers * block + 2 * e  # tied head
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    d = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    block = h * q + 2 * h * kv + q * h + 3 * h * i + (4 if config.model_type == "gemma2" else 2) * h
    if config.model_type == "qwen2":
        block += q + 2 * kv  # q/k/v biases
    if config.model_type == "qwen3":
        block += 2 * d  # q_norm, k_norm
    head = 0 if config.tie_word_embeddings else v * h
    return v * h + head + config.num_hidden_layers * block + h


def small_dims(kind: str) -> dict:
    # GPT-2's heads follow its hidden size (heads x head_dim 16 = hidden): 48 means 3 heads.
    return dict(hidden_size=48, intermediate_size=64) | ({} if kind == "gpt2" else dict(num_kv_groups=1))


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_model_saves_loads_and_has_the_expected_size(kind, blocks, ids, tmp_path):
    teacher = tiny_model(kind)
    student = width_pruned(teacher, VOCAB, blocks, **small_dims(kind), **CALIB)
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    c = loaded.config
    assert c.hidden_size == 48 and teacher_dims(loaded).intermediate == 64 and teacher_dims(loaded).head_dim == 16
    assert (c.num_attention_heads, getattr(c, "num_key_value_heads", 3)) == ((3, 3) if kind == "gpt2" else (2, 1))
    assert count(loaded) == expected_params(loaded.config) == student.pruning_report["params_after"]
    assert student.pruning_report["params_before"] == count(teacher) == expected_params(teacher.config)
    out = logits(loaded, ids)
    assert out.shape == (2, 12, VOCAB) and torch.isfinite(out).all()
    torch.testing.assert_close(out, logits(student, ids))


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_every_channel_reproduces_the_teacher_exactly(kind, blocks, ids):
    """All weights land in the right layout (GQA groups, biases, fused GPT-2 qkv, Conv1D)."""
    teacher = tiny_model(kind)
    dims = teacher_dims(teacher)
    full = dict(hidden_size=64, intermediate_size=dims.intermediate, num_kv_groups=dims.kv_groups)
    student = width_pruned(teacher, VOCAB, blocks, **full, **CALIB)
    assert count(student) == count(teacher)
    assert torch.equal(logits(student, ids), logits(teacher, ids))


def _kill_mlp_channels(model, dead: dict[int, list[int]]) -> None:
    """Zero what feeds the given MLP channels of each layer, so their activations are exactly 0."""
    with torch.no_grad():
        for layer, channels in dead.items():
            if model.config.model_type == "gpt2":
                fc = model.transformer.h[layer].mlp.c_fc  # Conv1D [in, out]; gelu(0) = 0
                fc.weight[:, channels] = 0
                fc.bias[channels] = 0
            else:
                mlp = model.model.layers[layer].mlp  # act(gate) * up = 0
                mlp.gate_proj.weight[channels] = 0
                mlp.up_proj.weight[channels] = 0


@pytest.mark.parametrize("kind", KINDS)
def test_dead_mlp_channels_rank_last_and_pruning_them_changes_nothing(kind, blocks, ids):
    teacher = tiny_model(kind)
    full = teacher_dims(teacher)
    dead = {layer: [(7 * layer + 3 * j) % full.intermediate for j in range(1, 6)] for layer in range(4)}
    _kill_mlp_channels(teacher, dead)
    imp = importance(teacher, calibration_batches(blocks, 8, 4))
    for layer, channels in dead.items():
        assert (imp.intermediate[layer, channels] == 0).all()
        assert imp.intermediate[layer].count_nonzero() == full.intermediate - 5
        kept = top(imp.intermediate[layer], full.intermediate - 5)
        assert not set(kept.tolist()) & set(channels)
    student = width_pruned(
        teacher,
        VOCAB,
        blocks,
        intermediate_size=full.intermediate - 5,
        num_kv_groups=full.kv_groups,
        hidden_size=full.hidden,
        **CALIB,
    )
    assert student.pruning_report["importance"]["intermediate"]["dropped_max"] == 0
    torch.testing.assert_close(logits(student, ids), logits(teacher, ids))


@pytest.mark.parametrize("kind", LLAMA_LIKE)
def test_a_dead_kv_group_is_dropped_with_its_query_heads(kind, blocks, ids):
    """Zero group 1's values: query heads 2 and 3 (its group) output 0; keeping group 0 changes nothing."""
    teacher = tiny_model(kind)
    with torch.no_grad():
        for layer in teacher.model.layers:
            v = layer.self_attn.v_proj
            v.weight[16:] = 0
            if v.bias is not None:
                v.bias[16:] = 0
    imp = importance(teacher, calibration_batches(blocks, 8, 4))
    assert (imp.kv_groups[:, 1] == 0).all() and (imp.kv_groups[:, 0] > 0).all()
    student = width_pruned(teacher, VOCAB, blocks, num_kv_groups=1, **CALIB)
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (2, 1)
    torch.testing.assert_close(logits(student, ids), logits(teacher, ids))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma"])
def test_a_dead_hidden_channel_ranks_last(kind, blocks):
    """A residual channel nothing writes to has zero norm outputs everywhere."""
    teacher, c = tiny_model(kind), 21
    with torch.no_grad():
        teacher.model.embed_tokens.weight[:, c] = 0
        for layer in teacher.model.layers:
            layer.self_attn.o_proj.weight[c] = 0
            layer.mlp.down_proj.weight[c] = 0
    imp = importance(teacher, calibration_batches(blocks, 8, 4))
    assert imp.hidden[c] == 0 and imp.hidden.count_nonzero() == 63
    assert c not in top(imp.hidden, 63).tolist()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_target_params_gives_the_largest_fitting_student(kind, blocks):
    teacher = tiny_model(kind)
    before = count(teacher)
    for target in (before // 2, 0.3):
        student = width_pruned(teacher, VOCAB, blocks, target_params=target, **CALIB)
        limit = target if isinstance(target, int) else int(target * before)
        assert count(student) == student.pruning_report["params_after"] <= limit
        assert count(student) > 0.75 * limit  # near the target, not merely under it
    default = width_pruned(teacher, VOCAB, blocks, **CALIB)
    assert 0.45 * before < count(default) <= 0.55 * before


def test_target_params_with_a_fixed_dimension(blocks):
    teacher = tiny_model("llama")
    student = width_pruned(teacher, VOCAB, blocks, num_kv_groups=1, hidden_size=64, target_params=100_000, **CALIB)
    dims = teacher_dims(student)
    assert (dims.hidden, dims.kv_groups) == (64, 1) and count(student) <= 100_000
    assert count(width_pruned(teacher, VOCAB, blocks, target_params=10**9, **CALIB)) == count(teacher)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_params=5_000), "cannot reach target_params=5,000"),
        (dict(hidden_size=64, intermediate_size=128, target_params=100_000), "cannot reach"),
        (dict(target_params=-1), "target_params"),
        (dict(hidden_size=65), "hidden_size must be an integer between 1 and the teacher's 64"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(num_kv_groups=3), "num_kv_groups"),
        (dict(num_kv_groups=1.5), "num_kv_groups"),
    ],
)
def test_impossible_sizes_are_one_clear_error(kwargs, match, blocks):
    with pytest.raises(DistillError, match=match):
        width_pruned(tiny_model("llama"), VOCAB, blocks, **kwargs, **CALIB)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=40), "multiple of head_dim 16"),
        (dict(hidden_size=48, num_kv_groups=2), "must equal num_kv_groups 2 x head_dim 16"),
    ],
)
def test_gpt2_heads_follow_the_hidden_size(kwargs, match, blocks):
    with pytest.raises(DistillError, match=match):
        width_pruned(tiny_model("gpt2"), VOCAB, blocks, **kwargs, **CALIB)
    student = width_pruned(tiny_model("gpt2"), VOCAB, blocks, num_kv_groups=2, **CALIB)
    assert (student.config.n_embd, student.config.n_head) == (32, 2)


def test_unsupported_architecture_names_the_supported_ones(blocks):
    config = AutoConfig.for_model(
        "opt",
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=32,
    )
    supported = "width pruning supports llama, mistral, qwen2, qwen3, gemma, gemma2, gpt2; the teacher is 'opt'"
    with pytest.raises(DistillError, match=supported):
        width_pruned(AutoModelForCausalLM.from_config(config), VOCAB, blocks)


def test_needs_a_teacher_and_calibration_data():
    with pytest.raises(DistillError, match="no teacher"):
        width_pruned(None, VOCAB, np.zeros((4, 9), dtype=np.int64))
    with pytest.raises(DistillError, match="calibration data"):
        width_pruned(tiny_model("llama"), VOCAB, None)


def test_report_and_dtype(blocks):
    teacher = tiny_model("llama").to(torch.bfloat16)
    student = width_pruned(teacher, VOCAB, blocks, hidden_size=32, intermediate_size=96, **CALIB)
    report = student.pruning_report
    assert report["method"] == "width"
    assert report["kept"] == {"hidden": 32, "intermediate": 96, "kv_groups": 2}
    assert report["params_before"] == count(teacher) and report["params_after"] == count(student)
    hidden = report["importance"]["hidden"]  # one global ranking: every kept channel beats every dropped one
    assert hidden["dropped_max"] <= hidden["kept_min"]
    assert next(student.parameters()).dtype == torch.bfloat16


def test_the_preset_prunes_to_55_percent(blocks):
    cfg = OmegaConf.create({"seed": 3, "student": OmegaConf.load(WIDTH_CONFIG)})  # seed: the run's
    make = instantiate(cfg.student)
    assert make.func is width_pruned and make.keywords["seed"] == 3
    teacher = tiny_model("qwen3")
    student = make(teacher=teacher, vocab_size=VOCAB, train_blocks=blocks)
    assert count(student) <= 0.55 * count(teacher)


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_weights_are_sliced_at_the_kept_indices(kind):
    """Kept hidden channels, KV group(s) and MLP channels, written out per weight layout."""
    teacher = tiny_model(kind)
    full = teacher_dims(teacher)
    hidden = torch.tensor([i for i in range(64) if i % 4 != 1])  # 48 channels
    groups = torch.tensor([0, 2, 3]) if kind == "gpt2" else torch.tensor([1])
    inter = [torch.arange(0, full.intermediate, 2) + (layer % 2) for layer in range(4)]  # different per layer
    dims = Dims(48, full.intermediate // 2, len(groups), full.heads_per_group, 16)
    student = slice_model(teacher, Keep(hidden, inter, [groups] * 4), dims)
    # query heads of the kept groups, 16 channels each (Qwen2: group 1 = query heads 2, 3)
    heads = groups if kind == "gpt2" else torch.tensor([2, 3])
    q = torch.cat([torch.arange(16 * h, 16 * h + 16) for h in heads.tolist()])
    kv = torch.cat([torch.arange(16 * g, 16 * g + 16) for g in groups.tolist()])
    s, t = student.state_dict(), teacher.state_dict()
    if kind == "gpt2":
        cols = torch.cat([q, 64 + q, 128 + q])  # c_attn is [in, q|k|v]
        expect = {
            "transformer.wte.weight": t["transformer.wte.weight"][:, hidden],
            "transformer.wpe.weight": t["transformer.wpe.weight"][:, hidden],
            "transformer.h.1.ln_1.bias": t["transformer.h.1.ln_1.bias"][hidden],
            "transformer.h.1.attn.c_attn.weight": t["transformer.h.1.attn.c_attn.weight"][hidden][:, cols],
            "transformer.h.1.attn.c_attn.bias": t["transformer.h.1.attn.c_attn.bias"][cols],
            "transformer.h.1.attn.c_proj.weight": t["transformer.h.1.attn.c_proj.weight"][q][:, hidden],
            "transformer.h.1.mlp.c_fc.weight": t["transformer.h.1.mlp.c_fc.weight"][hidden][:, inter[1]],
            "transformer.h.1.mlp.c_fc.bias": t["transformer.h.1.mlp.c_fc.bias"][inter[1]],
            "transformer.h.1.mlp.c_proj.weight": t["transformer.h.1.mlp.c_proj.weight"][inter[1]][:, hidden],
            "transformer.ln_f.weight": t["transformer.ln_f.weight"][hidden],
        }
    else:
        p = "model.layers.1."
        expect = {
            "model.embed_tokens.weight": t["model.embed_tokens.weight"][:, hidden],
            "lm_head.weight": t["lm_head.weight"][:, hidden],
            p + "input_layernorm.weight": t[p + "input_layernorm.weight"][hidden],
            p + "self_attn.q_proj.weight": t[p + "self_attn.q_proj.weight"][q][:, hidden],
            p + "self_attn.q_proj.bias": t[p + "self_attn.q_proj.bias"][q],
            p + "self_attn.k_proj.weight": t[p + "self_attn.k_proj.weight"][kv][:, hidden],
            p + "self_attn.v_proj.bias": t[p + "self_attn.v_proj.bias"][kv],
            p + "self_attn.o_proj.weight": t[p + "self_attn.o_proj.weight"][hidden][:, q],
            p + "mlp.up_proj.weight": t[p + "mlp.up_proj.weight"][inter[1]][:, hidden],
            p + "mlp.down_proj.weight": t[p + "mlp.down_proj.weight"][hidden][:, inter[1]],
            "model.norm.weight": t["model.norm.weight"][hidden],
        }
    for name, value in expect.items():
        assert torch.equal(s[name], value), name
