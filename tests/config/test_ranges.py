"""Every rule in ranges.py names a setting that exists, and every choice list resolves to the code's tuple:
a renamed argument or a moved constant fails here instead of silently unchecking a value."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest

from distill.config.ranges import RULES, KeysOf, OneOf, ge, gt, resolve, within
from distill.config.schema import NESTED, HiddenPairs, LayerPairs
from distill.config.targets import arguments, load_target


def owner_and_name(key: str):
    """``a.b.Class.arg`` (or ``...arg.*``) -> (the Class object, "arg")."""
    parts = key.removesuffix(".*").split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:-1]:
            obj = getattr(obj, attr)
        return obj, parts[-1]
    raise AssertionError(f"nothing imports in {key}")


@pytest.mark.parametrize("key", sorted(RULES))
def test_every_rule_names_a_real_setting(key):
    owner, name = owner_and_name(key)
    names = (
        {f.name for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else set(arguments(owner).params)
    )
    assert name in names, f"{key}: {owner} has no setting {name!r}"


@pytest.mark.parametrize("key", sorted(k for k, rule in RULES.items() if isinstance(rule, (OneOf, KeysOf))))
def test_every_choice_list_resolves(key):
    assert len(resolve(RULES[key].choices)) >= 1


@pytest.mark.parametrize("key", sorted(NESTED))
def test_every_nested_block_names_a_real_argument_and_record(key):
    owner, name = owner_and_name(key)
    assert name in arguments(owner).params
    assert dataclasses.is_dataclass(load_target(NESTED[key], key))


def test_loss_blocks_match_the_term_registry():
    """loss.hidden / loss.attention hold exactly the settings their terms read (distill.losses.terms)."""
    from distill.losses.terms import block_settings

    assert {f.name for f in dataclasses.fields(HiddenPairs)} == set(block_settings("hidden"))
    assert {f.name for f in dataclasses.fields(LayerPairs)} == set(block_settings("attention"))


@pytest.mark.parametrize(
    "rule, value, problem",
    [
        (gt(0), 0, "expected > 0"),
        (gt(0), 1e-9, None),
        (gt(0), math.inf, "expected a finite number > 0"),
        (ge(0), -1, "expected >= 0"),
        (ge(0), 0, None),
        (ge(1, also=(-1,)), -1, None),
        (ge(1, also=(-1,)), 0, "expected >= 1 or -1"),
        (within(0, 1), 1, None),
        (within(0, 1), math.nan, "expected a finite value in [0, 1]"),
        (within(0, 1, low_open=True, high_open=True), 0, "expected a value in (0, 1)"),
        (within(0, 1, high_open=True), 1.0, "expected a value in [0, 1)"),
        (gt(0), "2:4", None),  # another alternative of a union (a string): the rule is for numbers
        (gt(0), None, None),
        (OneOf(("a", "bb")), "b", "expected one of 'a', 'bb'; did you mean bb?"),
        (OneOf(("fp32", "bf16"), fold_case=True), "BF16", None),
        (OneOf((2, 4)), 3, "expected one of 2, 4"),
    ],
)
def test_rule_messages(rule, value, problem):
    assert rule.problem(value) == problem
