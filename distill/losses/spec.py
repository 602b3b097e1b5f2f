"""The loss settings, validated once: when the Objective is built, before any data or model work.

``loss_spec`` takes the keys of ``configs/loss/`` as the Objective receives them and returns a
``LossSpec``, or raises a ``DistillError`` that names the bad key in one line. What it accepts
derives from the term registry (``distill.losses.terms``): the term names, and the keys of each
term's settings block. The kernels (``divergences``, ``fused_linear``) trust these values and do
not check them again. Layer pairs are checked here for form only; their ranges need the models'
layer counts and are checked when the objective is bound to the models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from distill.errors import DistillError
from distill.losses.cross_vocab import GOLD_SPANS
from distill.losses.dual_space import SPACES
from distill.losses.likelihood import CHUNKS
from distill.losses.projected import PREFIX_CUTS
from distill.losses.representation import HIDDEN_METRICS, parse_pairs
from distill.losses.terms import REGISTRY, TERMS, block_settings, nearest, nearest_term
from distill.losses.within import WITHIN_ROWS
from distill.teacher.outputs import TAIL_MODES


@dataclass(frozen=True)
class OnPolicy:
    """GKD-style mixing (Agarwal et al. 2024): with probability ``lmbda`` a batch's continuations
    are sampled from the student and scored by the teacher; ``lmbda=0`` is off-policy."""

    lmbda: float = 0.0
    max_new_tokens: int = 32
    temperature: float = 1.0  # sampling temperature; 0 = greedy


# What a term's settings block holds when the caller leaves a key out. (The presets in
# configs/loss/ spell every key; these are for direct callers such as tests and benchmarks.)
BLOCK_DEFAULTS = {
    # teacher: with several teachers (``teachers=``), the one the term pairs with (a name or an index); None: the first
    "hidden": {"pairs": "auto", "metric": "mse", "teacher": None},
    "attention": {"pairs": "auto", "teacher": None},
    # matched_weight None: TRL's adaptive weight (the shared share of the teacher's vocabulary); spans: GOLD_SPANS
    "gold": {"matched_weight": None, "spans": "all"},
    # chunks: CHUNKS (likelihood.py): ALM over aligned spans, or over word chunks each followed by a space
    # binarization: ALM's τ (ℓ / τ before the binary KL; tokenkit's default is 100)
    "alm": {"chunks": "spans", "binarization": 1.0},
    # cuts: PREFIX_CUTS, which classes prefix_kl compares (distill/losses/projected.py)
    # within: the weight, relative to prefix_kl's, of the KL inside each span's class (distill/losses/within.py)
    # within_rows: WITHIN_ROWS, whose next row splits the classes (distill/losses/within.py)
    # uncovered_ce: CE's extra weight on the student's rows prefix_kl never reads (distill/losses/uncovered.py)
    "prefix_kl": {"cuts": "any", "within": 0.0, "within_rows": "teacher", "uncovered_ce": 0.0},
    # spaces: SPACES (dual_space.py): DSKD's two halves, or one of them
    "dual_space": {"spaces": "both"},
}


@dataclass(frozen=True)
class LossSpec:
    """Every setting of the objective, checked (see ``loss_spec``)."""

    weights: dict[str, float]  # term -> weight >= 0, not all 0; a term left out is off
    temperature: float = 1.0
    beta: float = 0.5
    tail: str = "bucket"
    chunk_size: int = 256
    fused_linear: bool = False
    compile: bool | str = "auto"
    hidden: dict = field(default_factory=lambda: dict(BLOCK_DEFAULTS["hidden"]))
    attention: dict = field(default_factory=lambda: dict(BLOCK_DEFAULTS["attention"]))
    gold: dict = field(default_factory=lambda: dict(BLOCK_DEFAULTS["gold"]))
    alm: dict = field(default_factory=lambda: dict(BLOCK_DEFAULTS["alm"]))
    prefix_kl: dict = field(default_factory=lambda: dict(BLOCK_DEFAULTS["prefix_kl"]))
    dual_space: dict = field(default_factory=lambda: dict(BLOCK_DEFAULTS["dual_space"]))
    on_policy: OnPolicy = field(default_factory=OnPolicy)


def loss_spec(
    weights,
    temperature=1.0,
    beta=0.5,
    tail="bucket",
    chunk_size=256,
    fused_linear=False,
    compile="auto",
    hidden=None,
    attention=None,
    on_policy=None,
    gold=None,
    alm=None,
    prefix_kl=None,
    dual_space=None,
) -> LossSpec:
    """The one validation of the loss settings (arguments as in ``configs/loss/forward_kl.yaml``)."""
    return LossSpec(
        weights=check_weights(weights),
        temperature=_number("loss.temperature", temperature, lambda v: v > 0, "must be > 0"),
        beta=_number("loss.beta", beta, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        tail=_choice("loss.tail", tail, TAIL_MODES),
        chunk_size=_integer("loss.chunk_size", chunk_size, minimum=1),
        fused_linear=_flag("loss.fused_linear", fused_linear),
        compile=_compile_mode(compile),
        hidden=_block("hidden", hidden),
        attention=_block("attention", attention),
        gold=_block("gold", gold),
        alm=_block("alm", alm),
        prefix_kl=_block("prefix_kl", prefix_kl),
        dual_space=_block("dual_space", dual_space),
        on_policy=_on_policy(on_policy),
    )


def check_weights(weights) -> dict[str, float]:
    """``{term: weight}``: known terms, numbers >= 0, not all 0. A weight of None leaves its term out."""
    if not hasattr(weights, "items"):
        raise DistillError(
            f"loss.weights must map terms to weights (e.g. {{forward_kl: 1.0, ce: 0.5}}), got {weights!r}"
        )
    weights = {str(name): w for name, w in weights.items() if w is not None}
    unknown = [name for name in weights if name not in REGISTRY]
    if unknown:
        guesses = ", ".join(f"{name!r} (did you mean {nearest_term(name)!r}?)" for name in unknown)
        raise DistillError(f"unknown loss term {guesses} in loss.weights; the terms are {', '.join(TERMS)}")
    for name, w in weights.items():
        if not _is_number(w) or not (math.isfinite(w) and w >= 0):
            raise DistillError(f"loss weights must be >= 0 and finite, got loss.weights.{name}={w!r}")
    weights = {name: float(w) for name, w in weights.items()}
    if not any(weights.values()):
        raise DistillError(
            f"loss weights are all 0 ({weights or 'no term'}): give at least one term a weight > 0, "
            f"e.g. loss.weights.ce=1"
        )
    return weights


def _block(block: str, given) -> dict:
    """A term's settings block (``loss.hidden``, ``loss.attention``): the keys its term reads
    (``terms.REGISTRY``), each checked, defaults filled in."""
    given = _mapping(f"loss.{block}", given)
    allowed = block_settings(block)
    unknown = [key for key in given if key not in allowed]
    if unknown:
        raise DistillError(
            f"loss.{block} has no setting {unknown[0]!r} ({REGISTRY[block].title} reads {', '.join(allowed)})"
        )
    settings = {**BLOCK_DEFAULTS[block], **given}
    return {key: _BLOCK_CHECKS[key](f"loss.{block}.{key}", value) for key, value in settings.items()}


def _pairs(key: str, value):
    try:
        pairs = parse_pairs(value)
    except DistillError as err:
        raise DistillError(f"{key}: {err}") from None
    return "auto" if pairs is None else pairs


def _share(key: str, value):
    return None if value is None else _number(key, value, lambda v: 0 <= v <= 1, "must be in [0, 1] or null")


def _teacher_name(key: str, value):
    """A teacher of ``teachers=``: its index (an integer >= 0) or its name; whether it exists is checked by the run."""
    if value is None or isinstance(value, str):
        return value
    return _integer(key, value, minimum=0)


_BLOCK_CHECKS = {
    "pairs": _pairs,
    "teacher": _teacher_name,
    "metric": lambda key, value: _choice(key, value, HIDDEN_METRICS),
    "matched_weight": _share,
    "spans": lambda key, value: _choice(key, value, GOLD_SPANS),
    "chunks": lambda key, value: _choice(key, value, CHUNKS),
    "binarization": lambda key, value: _number(key, value, lambda v: v > 0, "must be > 0"),
    "cuts": lambda key, value: _choice(key, value, PREFIX_CUTS),
    "within": lambda key, value: _number(key, value, lambda v: v >= 0, "must be >= 0"),
    "within_rows": lambda key, value: _choice(key, value, WITHIN_ROWS),
    "uncovered_ce": lambda key, value: _number(key, value, lambda v: v >= 0, "must be >= 0"),
    "spaces": lambda key, value: _choice(key, value, SPACES),
}


def _on_policy(given) -> OnPolicy:
    given = _mapping("loss.on_policy", given)
    unknown = [key for key in given if key not in OnPolicy.__dataclass_fields__]
    if unknown:
        raise DistillError(
            f"loss.on_policy has no setting {unknown[0]!r} (it reads {', '.join(OnPolicy.__dataclass_fields__)})"
        )
    spec = OnPolicy(**given)
    return OnPolicy(
        lmbda=_number("loss.on_policy.lmbda", spec.lmbda, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        max_new_tokens=_integer("loss.on_policy.max_new_tokens", spec.max_new_tokens, minimum=1),
        temperature=_number(
            "loss.on_policy.temperature", spec.temperature, lambda v: v >= 0, "must be >= 0 (0 = greedy)"
        ),
    )


def _mapping(key: str, given) -> dict:
    if given is None:
        return {}
    if not hasattr(given, "items"):
        raise DistillError(f"{key} must be a mapping of settings, got {given!r}")
    return {str(k): v for k, v in given.items()}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(key: str, value, ok, rule: str) -> float:
    if not _is_number(value) or not ok(value):  # NaN fails every rule
        raise DistillError(f"{key} {rule}, got {value!r}")
    return float(value)


def _integer(key: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DistillError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _choice(key: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        hint = f" (did you mean {nearest(value, choices)!r}?)" if isinstance(value, str) else ""
        raise DistillError(f"{key} must be one of {', '.join(choices)}, got {value!r}{hint}")
    return value


def _compile_mode(value) -> bool | str:
    if value is True or value is False or value == "auto":
        return value
    raise DistillError(f"loss.compile must be auto, true or false, got {value!r}")


def _flag(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise DistillError(f"{key} must be true or false, got {value!r}")
    return value
