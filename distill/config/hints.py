"""Type hints as checks on plain config values (what OmegaConf gives once resolved: None, bool, int,
float, str, dict, list).

A hint this module cannot judge (``Any``, a ``Callable``, a name left unresolved under
``from __future__ import annotations``) accepts every value: a check that guesses would stop valid
runs. A ``_target_`` node accepts every hint, since ``hydra.utils.instantiate`` builds it first (its
own arguments are checked against its own target instead).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections import abc
from typing import Annotated, Any, Literal, Union, get_args, get_origin

NoneType = type(None)
UNIONS = (Union, types.UnionType)

# What a scalar hint is called in a message: "loss.temperature='abc': expected a number (float)".
PHRASES = {float: "a number", int: "an integer", bool: "true or false", str: "a string", NoneType: "null"}


def is_node(value: object) -> bool:
    """A config node that ``hydra.utils.instantiate`` builds (it names a ``_target_``)."""
    return isinstance(value, dict) and "_target_" in value


def strip(hint):
    """The hint without ``Annotated[...]`` metadata."""
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def members(hint) -> tuple:
    """The alternatives of a union (``int | None`` -> ``(int, NoneType)``); a single hint otherwise."""
    hint = strip(hint)
    if hint is None:
        return (NoneType,)
    if get_origin(hint) in UNIONS:
        return tuple(m for arg in get_args(hint) for m in members(arg))
    return (hint,)


def _unknowable(hint) -> bool:
    return hint is Any or hint is object or isinstance(hint, (str, typing.ForwardRef, typing.TypeVar))


def _container(hint) -> type | None:
    """``dict`` for mapping hints, ``list`` for sequence hints (a config gives a list for either)."""
    cls = get_origin(hint) or hint
    if not isinstance(cls, type) or issubclass(cls, (str, bytes)):
        return None
    if issubclass(cls, abc.Mapping) or dataclasses.is_dataclass(cls):
        return dict
    if issubclass(cls, (abc.Iterable, abc.Set)) and cls is not abc.Callable:
        return list
    return None


def _matches_one(value: object, hint) -> bool:
    if _unknowable(hint):
        return True
    origin = get_origin(hint)
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in get_args(hint))
    if hint is NoneType:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int where a float is expected is fine (``loss.temperature=2``)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    cls = origin or hint
    if not isinstance(cls, type) or cls is abc.Callable or issubclass(cls, type):
        return True  # Callable[...], type[...] and other forms a config cannot spell: not judged
    if issubclass(cls, os.PathLike):
        return isinstance(value, str)
    if issubclass(cls, enum.Enum):
        return isinstance(value, str) or value in {m.value for m in cls}
    kind = _container(hint)
    if kind is not None:
        return isinstance(value, kind)
    return isinstance(value, cls)  # a class (Strategy, timedelta, ...): only a _target_ node builds one


def matches(value: object, hint) -> bool:
    """Whether ``value`` fits ``hint`` at its own level (elements are checked by ``elements``)."""
    return is_node(value) or any(_matches_one(value, m) for m in members(hint))


def chosen(value: object, hint):
    """The alternative of a union that ``value`` takes (for checking its elements)."""
    fitting = [m for m in members(hint) if m is not NoneType and _matches_one(value, m)]
    return fitting[0] if fitting else hint


def elements(value: object, hint) -> list[tuple[str, object, object]]:
    """``(path suffix, element, element hint)`` for the elements of a list or dict that ``hint`` types
    (``list[int]``, ``dict[str, float]``, ``tuple[str, ...]``); empty when it types none."""
    hint = strip(chosen(value, hint))
    args = [a for a in get_args(hint) if a is not Ellipsis]
    kind = _container(hint)
    if kind is dict and isinstance(value, dict) and len(args) == 2:
        return [(f".{k}", v, args[1]) for k, v in value.items()]
    if kind is list and isinstance(value, list) and args:
        if get_origin(hint) is tuple and Ellipsis not in get_args(hint) and len(args) == len(value):
            return [(f"[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args))]
        if len(args) == 1:
            return [(f"[{i}]", v, args[0]) for i, v in enumerate(value)]
    return []


def type_name(hint) -> str:
    """``hint`` as it is written in code: ``int | None``, ``list[int]``, ``dict[str, float]``."""
    hint = strip(hint)
    if hint is None or hint is NoneType:
        return "None"
    origin, args = get_origin(hint), get_args(hint)
    if origin in UNIONS:
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def _phrase(hint) -> str:
    if hint in PHRASES:
        return PHRASES[hint]
    kind = _container(hint)
    if kind is dict:
        return "a mapping"
    if kind is list:
        return "a list"
    cls = get_origin(hint) or hint
    if isinstance(cls, type) and issubclass(cls, os.PathLike):
        return "a path"
    return f"a {type_name(hint)} (a _target_ node that builds one)"


def describe(hint) -> str:
    """What a value of ``hint`` is, for a message: ``a number (float)``, ``an integer or null (int | None)``,
    ``one of 'step', 'epoch' or null``."""
    alternatives = members(hint)
    literals = [repr(a) for m in alternatives if get_origin(m) is Literal for a in get_args(m)]
    others = [m for m in alternatives if get_origin(m) is not Literal and not (m is int and float in alternatives)]
    phrases = ([f"one of {', '.join(literals)}"] if literals else []) + list(dict.fromkeys(map(_phrase, others)))
    phrase = " or ".join(phrases)
    if literals or not all(m in PHRASES or _container(m) is not None for m in others):
        return phrase  # the choices, or a class name, say it all
    return f"{phrase} ({type_name(hint)})"  # "a number (float)": int | float reads as a number too
