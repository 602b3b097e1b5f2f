"""The loss settings are validated once, when the Objective is built: each bad one is one line naming its key."""

import pytest
from omegaconf import OmegaConf

from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.losses.spec import OnPolicy, loss_spec
from distill.losses.terms import nearest_term

OK = {"forward_kl": 1.0, "ce": 0.5}


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(weights={"kl": 1.0}), "unknown loss term 'kl' (did you mean 'forward_kl'?) in loss.weights"),
        (dict(weights={"forward_kl": 1.0, "hiden": 1.0}), "'hiden' (did you mean 'hidden'?)"),
        (dict(weights={"Reverse_KL": 1.0}), "did you mean 'reverse_kl'?"),
        (
            dict(weights={"forward_kl": -1.0, "ce": 1.0}),
            "loss weights must be >= 0 and finite, got loss.weights.forward_kl=-1.0",
        ),
        (dict(weights={"ce": float("nan")}), "got loss.weights.ce=nan"),
        (dict(weights={"ce": float("inf")}), "got loss.weights.ce=inf"),
        (dict(weights={"ce": "high"}), "got loss.weights.ce='high'"),
        (
            dict(weights={"gold": 1.0}, gold={"spans": "one"}),
            "loss.gold.spans must be one of all, one_to_one, got 'one'",
        ),
        (dict(weights={"forward_kl": 0.0, "ce": 0.0}), "loss weights are all 0"),
        (dict(weights={}), "loss weights are all 0 (no term)"),
        (dict(weights=1.0), "loss.weights must map terms to weights"),
        (dict(weights=OK, temperature=0.0), "loss.temperature must be > 0, got 0.0"),
        (dict(weights=OK, temperature=-2), "loss.temperature must be > 0, got -2"),
        (dict(weights=OK, temperature=float("nan")), "loss.temperature must be > 0, got nan"),
        (dict(weights=OK, temperature="hot"), "loss.temperature must be > 0, got 'hot'"),
        (dict(weights=OK, beta=1.5), "loss.beta must be in [0, 1], got 1.5"),
        (dict(weights=OK, beta=-0.1), "loss.beta must be in [0, 1], got -0.1"),
        (dict(weights=OK, tail="drop"), "loss.tail must be one of bucket, renormalize, got 'drop'"),
        (dict(weights=OK, tail="buckets"), "got 'buckets' (did you mean 'bucket'?)"),
        (dict(weights=OK, chunk_size=0), "loss.chunk_size must be an integer >= 1, got 0"),
        (dict(weights=OK, chunk_size=2.5), "loss.chunk_size must be an integer >= 1, got 2.5"),
        (dict(weights=OK, fused_linear="yes"), "loss.fused_linear must be true or false, got 'yes'"),
        (dict(weights=OK, hidden={"metric": "l2"}), "loss.hidden.metric must be one of mse, cosine, got 'l2'"),
        (dict(weights=OK, hidden={"pairs": "last"}), "loss.hidden.pairs: layer pairs must be 'auto' or"),
        (dict(weights=OK, hidden={"pairs": [[0]]}), "loss.hidden.pairs: layer pair [0] must be"),
        (dict(weights=OK, hidden={"pairs": [[0, "a"]]}), "loss.hidden.pairs: layer pair [0, 'a'] must be"),
        (
            dict(weights=OK, hidden={"layers": "auto"}),
            "loss.hidden has no setting 'layers' (hidden-state distillation reads pairs, metric, teacher)",
        ),
        (dict(weights=OK, attention={"pairs": []}), "loss.attention.pairs: layer pairs must be"),
        (dict(weights=OK, attention={"metric": "mse"}), "loss.attention has no setting 'metric'"),
        (dict(weights=OK, hidden="auto"), "loss.hidden must be a mapping"),
        (dict(weights=OK, on_policy={"lmbda": 2.0}), "loss.on_policy.lmbda must be in [0, 1], got 2.0"),
        (dict(weights=OK, on_policy={"max_new_tokens": 0}), "loss.on_policy.max_new_tokens must be an integer >= 1"),
        (dict(weights=OK, on_policy={"temperature": -1.0}), "loss.on_policy.temperature must be >= 0 (0 = greedy)"),
        (dict(weights=OK, on_policy={"lambda": 0.5}), "loss.on_policy has no setting 'lambda'"),
    ],
)
def test_each_bad_setting_is_one_line_naming_its_key(kwargs, expected):
    with pytest.raises(DistillError) as err:
        Objective(**kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_every_unknown_term_gets_its_nearest_valid_term():
    with pytest.raises(DistillError, match=r"'kl' \(did you mean 'forward_kl'\?\), 'tdv' \(did you mean 'tvd'\?\)"):
        loss_spec({"kl": 1.0, "tdv": 1.0, "ce": 1.0})
    guesses = {
        "foward_kl": "forward_kl",
        "KL": "forward_kl",
        "rkl": "reverse_kl",
        "reverse-kl": "reverse_kl",
        "js": "jsd",
        "total_variation": "tvd",
        "cross_entropy": "ce",
        "hidden_states": "hidden",
        "hiddens": "hidden",
        "attn": "attention",
    }
    assert {name: nearest_term(name) for name in guesses} == guesses


def test_a_hydra_config_becomes_plain_checked_values():
    cfg = OmegaConf.create(
        {
            "weights": {"forward_kl": 1, "ce": None, "hidden": 0.0},
            "temperature": 2,
            "hidden": {"pairs": [[3, 1], [1, 0]]},
            "on_policy": {"lmbda": 0.5},
        }
    )
    spec = loss_spec(**cfg)
    assert spec.weights == {"forward_kl": 1.0, "hidden": 0.0}  # a weight of None leaves its term out
    assert all(type(w) is float for w in spec.weights.values()) and spec.temperature == 2.0
    # defaults fill what is not given
    assert spec.hidden == {"pairs": [(3, 1), (1, 0)], "metric": "mse", "teacher": None}
    assert spec.attention == {"pairs": "auto", "teacher": None}
    assert spec.on_policy == OnPolicy(lmbda=0.5, max_new_tokens=32, temperature=1.0)
    assert (spec.beta, spec.tail, spec.chunk_size, spec.fused_linear) == (0.5, "bucket", 256, False)


def test_the_objective_keeps_what_was_validated():
    obj = Objective(
        {"jsd": 1.0, "ce": 0.5},
        temperature=3,
        beta=0.2,
        tail="renormalize",
        chunk_size=7,
        hidden={"metric": "cosine"},
        on_policy={"lmbda": 0.25},
    )
    assert obj.weights == {"jsd": 1.0, "ce": 0.5} and obj.temperature == 3.0 and obj.beta == 0.2
    assert (obj.tail, obj.chunk_size, obj.fused_linear) == ("renormalize", 7, False)
    assert obj.hidden_spec == {"pairs": "auto", "metric": "cosine", "teacher": None} and obj.on_policy.lmbda == 0.25
