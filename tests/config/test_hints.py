"""Type hints judged against plain config values, and said in words."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest

from distill.config.hints import describe, elements, matches


@pytest.mark.parametrize(
    "value, hint, ok",
    [
        (2, float, True),  # Hydra reads loss.temperature=2 as an int
        (True, float, False),
        (True, int, False),
        (2.0, int, False),
        (None, Optional[int], True),  # noqa: UP045 - the spelling Lightning's hints use
        (None, int, False),
        ("x", str | Path, True),
        ([1, 2], list[int], True),  # elements are checked one by one (elements())
        ((1, 2), list[int], False),
        ({"a": 1}, Mapping[str, float], True),
        ([1], Mapping, False),
        ("epoch", Literal["step", "epoch"], True),
        ("month", Literal["step", "epoch"], False),
        (True, Literal[1], False),
        ("1h", Union[str, timedelta, None], True),  # noqa: UP007
        (3, timedelta, False),
        ({"_target_": "datetime.timedelta", "hours": 1}, timedelta, True),  # instantiate builds it
        ("anything", Any, True),
        ("anything", Callable[[int], int], True),  # not judged
        ("anything", "UnresolvedName", True),
    ],
)
def test_matches(value, hint, ok):
    assert matches(value, hint) is ok


def test_elements_follow_the_alternative_the_value_takes():
    assert elements([0, "x"], list[int] | str) == [("[0]", 0, int), ("[1]", "x", int)]
    assert elements({"ce": 0.5}, dict[str, float] | None) == [(".ce", 0.5, float)]
    assert elements([1, "a"], tuple[int, str]) == [("[0]", 1, int), ("[1]", "a", str)]
    assert elements("auto", list[int] | str) == []


@pytest.mark.parametrize(
    "hint, words",
    [
        (float, "a number (float)"),
        (int | None, "an integer or null (int | None)"),
        (Union[int, float, None], "a number or null (int | float | None)"),  # noqa: UP007
        (list[int], "a list (list[int])"),
        (dict[str, float], "a mapping (dict[str, float])"),
        (Optional[Literal["step", "epoch"]], "one of 'step', 'epoch' or null"),  # noqa: UP045
        (timedelta | None, "a timedelta (a _target_ node that builds one) or null"),
    ],
)
def test_describe(hint, words):
    assert describe(hint) == words
