"""The registry of loss terms: the kernels, the Objective's questions and configs/loss/ all derive from it."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from distill.errors import DistillError
from distill.losses import cross_vocab, divergences
from distill.losses.objective import Objective, Outputs
from distill.losses.spec import BLOCK_DEFAULTS
from distill.losses.terms import (
    ALIGNED_TERMS,
    DISTRIBUTION_TERMS,
    DIVERGENCES,
    REGISTRY,
    REPRESENTATION_TERMS,
    TERMS,
    block_settings,
)

LOSS_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "loss"


def test_every_distribution_term_has_a_kernel_and_a_reference():
    assert set(DISTRIBUTION_TERMS) == set(divergences.TERMS)
    # span kernels; alm: autograd; dual_space: the models' hidden states through each other's heads (its own module)
    assert set(ALIGNED_TERMS) - {"dual_space"} == set(cross_vocab.TERMS) == {*cross_vocab._PER_SPAN, "alm"}
    assert set(DISTRIBUTION_TERMS) | set(REPRESENTATION_TERMS) | set(ALIGNED_TERMS) == set(TERMS)
    assert set(DIVERGENCES) == set(divergences._PER_TOKEN) == set(DISTRIBUTION_TERMS) - {"ce"}
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    for name in DIVERGENCES:  # the readable reference each kernel is tested against
        assert getattr(divergences, name)(s, t).item() > 0


def test_term_settings_blocks_match_the_spec_defaults():
    for block in (*REPRESENTATION_TERMS, "gold", "alm", "prefix_kl", "dual_space"):
        assert set(BLOCK_DEFAULTS[block]) == set(block_settings(block))
    assert block_settings("hidden") == ("pairs", "metric", "teacher")
    assert block_settings("attention") == ("pairs", "teacher")
    assert block_settings("gold") == ("matched_weight", "spans") and block_settings("uld") == ()


def _yaml_keys(path: Path) -> set[str]:
    """Dotted keys a config file spells (its defaults list aside)."""
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    cfg.pop("defaults", None)
    return {
        f"{k}.{sub}" if isinstance(v, dict) else k
        for k, v in cfg.items()
        for sub in (v if isinstance(v, dict) else [None])
    }


def test_each_term_has_one_config_file_holding_its_own_settings():
    files = {p.stem: p for p in (LOSS_CONFIGS / "terms").glob("*.yaml")}
    assert set(files) == set(TERMS)
    spelled = {name: _yaml_keys(path) for name, path in files.items()}
    base = _yaml_keys(LOSS_CONFIGS / "forward_kl.yaml")  # what the divergences share, and the engine
    for name, term in REGISTRY.items():
        assert spelled[name] <= set(term.settings), name
        for setting in term.settings:  # each setting is spelled in exactly one file
            assert [where for where, keys in [("base", base), *spelled.items()] if setting in keys] in (
                [name],
                ["base"],
            ), setting


def test_the_models_return_what_the_wired_terms_need():
    obj = Objective({"forward_kl": 1.0, "hidden": 0.0})
    assert obj.needs_hidden_states and not obj.needs_attentions  # at weight 0: a schedule may switch it on
    assert obj.active_terms == ("forward_kl",) and obj.distills_logits
    ce = Objective({"ce": 1.0, "forward_kl": 0.0})
    assert ce.needs_teacher() == [] and not ce.distills_logits and ce.needs_live_teacher() == []
    assert Objective({"tvd": 1.0, "attention": 0.5}).needs_teacher() == ["tvd", "attention"]
    cross = Objective({"gold": 1.0, "ce": 0.5})  # across vocabularies: a cache serves it too
    assert cross.aligned_terms == ("gold",) and cross.needs_teacher() == ["gold"] and cross.distills_logits
    assert cross.needs_live_teacher() == [] and cross.logit_weights(teacher=object()) == {"ce": 0.5}


def test_cross_vocabulary_terms_refuse_the_fused_loss_and_a_batch_without_alignment():
    with pytest.raises(DistillError, match="loss.fused_linear cannot serve loss.weights.uld"):
        Objective({"uld": 1.0}, fused_linear=True)
    with pytest.raises(DistillError, match="loss.gold.matched_weight must be in"):
        Objective({"gold": 1.0}, gold={"matched_weight": 1.5})
    s, t = Outputs(logits=torch.randn(1, 4, 9), vocab_size=9), Outputs(logits=torch.randn(1, 5, 7), vocab_size=7)
    with pytest.raises(DistillError, match="student.tokenizer=<dir> or student.vocab_size=N"):
        Objective({"uld": 1.0})(s, t, torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, reasons",
    [
        (dict(weights={"forward_kl": 1.0, "jsd": 1.0, "ce": 0.5}, tail="renormalize"), []),
        (dict(weights={"forward_kl": 1.0, "hidden": 0.0}), ["hidden-state distillation (loss.weights.hidden)"]),
        (dict(weights={"forward_kl": 1.0, "attention": 1.0}), ["attention-map distillation (loss.weights.attention)"]),
        (dict(weights={"jsd": 1.0}, on_policy={"lmbda": 0.5}), ["on-policy sampling (loss.on_policy.lmbda > 0)"]),
        (dict(weights={"forward_kl": 1.0}, fused_linear=True), ["the fused LM-head loss (loss.fused_linear)"]),
    ],
)
def test_needs_live_teacher_names_what_a_cache_cannot_serve(kwargs, reasons):
    assert Objective(**kwargs).needs_live_teacher() == reasons
