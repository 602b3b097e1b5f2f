"""Sparse students (Wanda and magnitude): exact masks, fixed during training, exported with the zeros."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from distill.errors import DistillError
from distill.student.scratch import build_llama
from distill.student.sparsity import (
    bake_masks,
    mask_from_scores,
    parse_sparsity,
    sparse_student,
    target_linears,
    verify_sparsity,
)
from tests.student.tiny_models import CONFIGS, VOCAB, tiny_model

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "student"


def blocks(n: int = 6, length: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, length))


def mask_of(module) -> torch.Tensor:
    return module.parametrizations.weight[0].mask


def rows(module, w):  # [out, in], written out here rather than borrowed from the module under test
    return w.t() if isinstance(module, Conv1D) else w


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids, use_cache=False).logits


def input_sq_sums(model, modules, ids) -> dict:
    sums = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a: sums.__setitem__(m, a[0].reshape(-1, a[0].shape[-1]).pow(2).sum(0)))
        for m in modules
    ]
    logits(model, ids)
    for h in hooks:
        h.remove()
    return sums


# --- patterns ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected", [(0.5, 0.5), ("0.5", 0.5), (" 0.25 ", 0.25), ("2:4", (2, 4)), ("1:4", (1, 4)), ([2, 4], (2, 4))]
)
def test_parse_sparsity(value, expected):
    assert parse_sparsity(value) == expected


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "abc", "4:2", "0:4", "2:2", "2:4:8", True, None, "50%"])
def test_parse_sparsity_rejects(value):
    with pytest.raises(DistillError, match="sparsity"):
        parse_sparsity(value)


def test_unquoted_yaml_n_m_gets_a_hint():
    value = OmegaConf.create("s: 2:4").s  # YAML 1.1 base-60: 124
    with pytest.raises(DistillError, match="quote"):
        parse_sparsity(value)


def test_n_m_needs_divisible_inputs():
    with pytest.raises(DistillError, match="divisible by 4"):
        mask_from_scores(torch.rand(3, 6), (2, 4))


# --- exact masks ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_unstructured_masks_are_exact_per_row(kind, method):
    student = sparse_student(tiny_model(kind), VOCAB, blocks(), method=method, sparsity=0.5)
    for name, m in target_linears(student):
        w = rows(m, m.weight)
        out_f, in_f = w.shape
        assert ((w == 0).sum(1) == in_f // 2).all(), name
        assert torch.equal(w != 0, rows(m, mask_of(m))), name


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_two_four_keeps_two_of_every_four_consecutive_inputs(kind):
    student = sparse_student(tiny_model(kind), VOCAB, blocks(), sparsity="2:4")
    for name, m in target_linears(student):
        w = m.weight.detach()
        if isinstance(m, Conv1D):  # [in, out]: groups run down the first dimension
            groups = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(1)
        else:  # [out, in]: groups run along the second
            groups = (w != 0).reshape(w.shape[0], w.shape[1] // 4, 4).sum(-1)
        assert (groups == 2).all(), name
    assert student.pruning_report["sparsity"] == "2:4"
    assert student.pruning_report["nonzero_after"] * 2 == student.pruning_report["params_before"]


def test_only_decoder_block_linears_are_pruned():
    teacher = tiny_model("llama")
    student = sparse_student(teacher, VOCAB, blocks(), sparsity=0.5)
    pruned = {n for n, _ in target_linears(student)}
    assert len(pruned) == 4 * 7  # q k v o gate up down per layer
    assert all(".layers." in n for n in pruned)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert not any("parametrizations" in n for n, _ in teacher.named_parameters())  # the teacher is untouched
    assert set(student.pruning_report) >= {"method", "sparsity", "layers", "params_before", "nonzero_after"}
    assert set(student.pruning_report["layers"]) == pruned


@pytest.mark.parametrize("pattern", [0.5, "2:4"])
def test_magnitude_drops_the_smallest_weights(pattern):
    teacher = tiny_model("llama")
    student = sparse_student(teacher, VOCAB, None, method="magnitude", sparsity=pattern)
    for (name, t), (_, s) in zip(target_linears(teacher), target_linears(student)):
        w, keep = t.weight.detach().abs(), mask_of(s)
        if pattern == "2:4":
            w, keep = w.reshape(-1, 4), keep.reshape(-1, 4)
        dropped = torch.where(keep, torch.inf, w).amin(1)
        kept_min = torch.where(keep, w, torch.inf).amin(1)
        assert (torch.where(keep, -torch.inf, w).amax(1) <= kept_min).all(), name
        assert torch.isfinite(dropped).all()


@pytest.mark.parametrize(
    "kind, layer", [("llama", "self_attn.q_proj"), ("llama", "mlp.down_proj"), ("gpt2", "mlp.c_fc")]
)
def test_wanda_scores_are_weight_times_input_norm(kind, layer):
    """First block: nothing before it is pruned, so its inputs are the dense teacher's."""
    teacher, data = tiny_model(kind), blocks()
    student = sparse_student(
        teacher, VOCAB, data, sparsity=0.5, calibration_samples=len(data), calibration_batch_size=4
    )
    block = teacher.model.layers[0] if kind != "gpt2" else teacher.transformer.h[0]
    sblock = student.model.layers[0] if kind != "gpt2" else student.transformer.h[0]
    m = block.get_submodule(layer)
    norm = input_sq_sums(teacher, [m], torch.as_tensor(data[:, :-1]))[m].sqrt()
    score = rows(m, m.weight.detach()).abs() * norm[None, :]
    k = score.shape[1] // 2
    expected = torch.ones_like(score, dtype=torch.bool).scatter_(1, score.argsort(1)[:, :k], False)
    assert torch.equal(rows(m, mask_of(sblock.get_submodule(layer))), expected)
    # and it is not just magnitude in disguise
    by_magnitude = torch.ones_like(score, dtype=torch.bool).scatter_(
        1, rows(m, m.weight).abs().argsort(1)[:, :k], False
    )
    assert not torch.equal(expected, by_magnitude)


@pytest.mark.parametrize("sequential", [True, False])
def test_wanda_later_blocks_see_pruned_or_dense_inputs(sequential):
    """Sequential (the paper's): block 1's norms come from the model with block 0 already pruned;
    one pass: from the dense model."""
    teacher, data = tiny_model("llama"), blocks()
    student = sparse_student(teacher, VOCAB, data, sparsity=0.5, sequential=sequential, calibration_samples=len(data))
    reference = copy.deepcopy(teacher)
    if sequential:
        with torch.no_grad():
            for name, m in reference.model.layers[0].named_modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.mul_(mask_of(student.model.layers[0].get_submodule(name)))
    m = reference.model.layers[1].mlp.up_proj
    norm = input_sq_sums(reference, [m], torch.as_tensor(data[:, :-1]))[m].sqrt()
    score = m.weight.detach().abs() * norm[None, :]
    expected = torch.ones_like(score, dtype=torch.bool).scatter_(1, score.argsort(1)[:, : score.shape[1] // 2], False)
    assert torch.equal(mask_of(student.model.layers[1].mlp.up_proj), expected)


# --- fixed during training, exported with the zeros ----------------------------------------------


def test_masks_survive_optimizer_steps_and_gradients_reach_kept_weights():
    student = sparse_student(tiny_model("llama"), VOCAB, blocks(), sparsity=0.5).train()
    q = student.model.layers[1].self_attn.q_proj
    keep, before = mask_of(q).clone(), q.parametrizations.weight.original.detach().clone()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.as_tensor(blocks(8, 17, seed=1))
    for _ in range(3):
        loss = F.cross_entropy(student(input_ids=ids[:, :-1]).logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        grad = q.parametrizations.weight.original.grad
        assert (grad[~keep] == 0).all() and (grad[keep] != 0).float().mean() > 0.9
        opt.step()
    assert torch.equal(q.weight != 0, keep)
    original = q.parametrizations.weight.original.detach()
    assert not torch.equal(original[keep], before[keep])  # the kept weights trained
    verify_sparsity(student, 0.5)


@pytest.mark.parametrize("kind, pattern", [("llama", 0.5), ("gpt2", "2:4")])
def test_bake_save_load_keeps_zeros_and_logits(kind, pattern, tmp_path):
    student = sparse_student(tiny_model(kind), VOCAB, blocks(), sparsity=pattern)
    ids = torch.as_tensor(blocks(2, 9, seed=3))
    expected = logits(student, ids)
    bake_masks(student)
    assert not any("parametrizations" in k for k in student.state_dict())
    torch.testing.assert_close(logits(student, ids), expected, rtol=0, atol=0)
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(loaded, ids), expected)
    report = verify_sparsity(loaded, pattern)
    assert report["overall"] == pytest.approx(0.5, abs=1e-6)
    assert report["nonzero"] == student.pruning_report["nonzero_after"]


def test_bake_is_a_no_op_on_a_dense_model():
    model = tiny_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bake_masks(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("pattern", [0.5, "2:4"])
def test_verify_raises_when_a_zero_is_overwritten(pattern):
    student = bake_masks(sparse_student(tiny_model("qwen2"), VOCAB, None, method="magnitude", sparsity=pattern))
    assert verify_sparsity(student, pattern)["overall"] == pytest.approx(0.5)
    w = student.model.layers[2].mlp.gate_proj.weight
    with torch.no_grad():
        w[5, (w[5] == 0).nonzero()[0, 0]] = 1.0
    with pytest.raises(DistillError, match=r"layers\.2\.mlp\.gate_proj"):
        verify_sparsity(student, pattern)


def test_verify_rejects_a_dense_model():
    with pytest.raises(DistillError, match="violated"):
        verify_sparsity(tiny_model("llama"), "2:4")


# --- every architecture, the configs, the errors ---------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_architecture_end_to_end(kind, tmp_path):
    teacher, data = tiny_model(kind), blocks(4, 9)
    ids = torch.as_tensor(data[:2, :-1])
    for pattern in (0.5, "2:4"):
        student = sparse_student(
            teacher, VOCAB, data, sparsity=pattern, calibration_samples=4, calibration_batch_size=2
        )
        report = student.pruning_report
        assert report["method"] == "wanda" and report["nonzero_after"] * 2 == report["params_before"]
        assert torch.isfinite(logits(student, ids)).all()
    bake_masks(student)
    student.save_pretrained(tmp_path)
    verify_sparsity(AutoModelForCausalLM.from_pretrained(tmp_path), "2:4")


@pytest.mark.parametrize("name", ["wanda", "magnitude"])
def test_configs_build_a_sparse_student(name):
    cfg = OmegaConf.create({"seed": 0, "student": OmegaConf.load(CONFIG_DIR / f"{name}.yaml")})
    make = instantiate(cfg.student)
    assert make.keywords["method"] == name and make.keywords["sparsity"] == 0.5
    student = make(teacher=tiny_model("llama"), vocab_size=VOCAB, train_blocks=blocks())
    assert student.pruning_report["method"] == name
    cfg.student.sparsity = "2:4"
    assert (
        instantiate(cfg.student)(teacher=tiny_model("gpt2"), vocab_size=VOCAB, train_blocks=blocks()).pruning_report[
            "sparsity"
        ]
        == "2:4"
    )


def test_sparsify_every_other_layer():
    student = sparse_student(tiny_model("llama"), VOCAB, blocks(), sparsity=0.5, base="every_other_layer")
    assert student.config.num_hidden_layers == 2
    verify_sparsity(student, 0.5)


def test_errors():
    teacher = tiny_model("llama")
    with pytest.raises(DistillError, match="calibration data"):
        sparse_student(teacher, VOCAB, None, method="wanda")
    with pytest.raises(DistillError, match="method"):
        sparse_student(teacher, VOCAB, blocks(), method="sparsegpt")
    with pytest.raises(DistillError, match="base"):
        sparse_student(teacher, VOCAB, blocks(), base="half")
    with pytest.raises(DistillError, match="needs a teacher"):
        sparse_student(None, VOCAB, blocks())
    with pytest.raises(DistillError, match=r"\[n, seq_len \+ 1\]"):
        sparse_student(teacher, VOCAB, np.zeros(5, dtype=np.int64))
    bert_like = build_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2)
    bert_like.config.model_type = "bert"
    with pytest.raises(DistillError, match="bert"):
        sparse_student(bert_like, VOCAB, blocks())


# --- Wanda vs magnitude -------------------------------------------------------------------------


def markov_blocks(successors: np.ndarray, n: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, length), dtype=np.int64)
    out[:, 0] = rng.integers(0, VOCAB, n)
    for j in range(1, length):
        out[:, j] = successors[out[:, j - 1], rng.integers(0, successors.shape[1], n)]
    return out


def test_wanda_damages_less_than_magnitude_with_outlier_features():
    """The measured goal at tiny scale. Wanda's edge comes from input features of very different
    scales (LLMs' outlier features); a tiny model with unit norm weights has none, and there
    the two methods tie within noise (not asserted). So: give the norms log-normal gains (the
    outlier regime), train a few dozen steps on a 2-successor Markov chain, then compare the
    damage at 50% and 2:4 -- KL from the dense model and perplexity on held-out blocks.
    (Held on 4/4 seeds for Llama and GPT-2 in KL; perplexity tied once, on GPT-2.)"""
    torch.manual_seed(1)
    teacher = tiny_model("llama", seed=1)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(torch.randn(p.shape).exp())
    successors = np.random.default_rng(1).integers(0, VOCAB, (VOCAB, 2))
    train, held_out = markov_blocks(successors, 64, 33, 1), torch.as_tensor(markov_blocks(successors, 64, 33, 101))
    opt = torch.optim.AdamW(teacher.train().parameters(), lr=3e-3)
    for step in range(40):
        ids = torch.as_tensor(train[np.random.default_rng(step).integers(0, len(train), 16)])
        loss = F.cross_entropy(teacher(input_ids=ids[:, :-1]).logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    dense = logits(teacher, held_out[:, :-1]).log_softmax(-1)

    def damage(method, pattern):
        s = logits(
            sparse_student(teacher, VOCAB, train, method=method, sparsity=pattern, calibration_samples=32),
            held_out[:, :-1],
        ).log_softmax(-1)
        kl = F.kl_div(s, dense, log_target=True, reduction="none").sum(-1).mean().item()
        ppl = F.nll_loss(s.flatten(0, 1), held_out[:, 1:].flatten()).exp().item()
        return kl, ppl

    for pattern in (0.5, "2:4"):
        (w_kl, w_ppl), (m_kl, m_ppl) = damage("wanda", pattern), damage("magnitude", pattern)
        assert w_kl < 0.75 * m_kl, (pattern, w_kl, m_kl)
        assert w_ppl <= m_ppl, (pattern, w_ppl, m_ppl)
