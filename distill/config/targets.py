"""What a ``_target_`` node may hold: the arguments of the callable it names, with their type hints.

The signature is the schema, so every builder, data module, objective and plugin is covered without
repeating its arguments, and a new one is covered the day it is written. ``**kwargs`` are followed to
the callable that receives them (``forwarding``); an argument is filed under the callable that
declares it (``distill.data.datamodule.TextDataModule.seq_len``), which is how ``ranges`` names it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distill.config.forwarding import defining_class, forwarded
from distill.config.suggest import did_you_mean
from distill.errors import DistillError

# Hydra's own keys in a node (hydra.utils.instantiate): never arguments of the target.
RESERVED = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


@dataclass(frozen=True)
class Param:
    hint: Any
    owner: str  # the callable that declares it, dotted: its rules in ``ranges`` are "<owner>.<name>"


@dataclass(frozen=True)
class Arguments:
    params: dict[str, Param]
    open: bool  # takes **kwargs that could not be followed: any other key may be valid too


def dotted_name(obj: Callable) -> str:
    """Where ``obj`` is defined (``lightning.pytorch.trainer.trainer.Trainer``), for a class the class
    whose ``__init__`` declares the arguments."""
    if isinstance(obj, type) and defining_class(obj) is not object:
        obj = defining_class(obj)
    return f"{obj.__module__}.{obj.__qualname__}"


def load_target(path: object, where: str) -> Callable:
    """The callable a ``_target_`` names; a path that does not import is the user's error, named."""
    if not isinstance(path, str) or "." not in path:
        raise DistillError(f"{where}._target_={path!r}: expected a dotted path to a class or function")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        try:  # a class attribute (pkg.mod.Class.method) or a module that is itself missing
            from hydra.utils import get_object

            return get_object(path)
        except Exception:  # noqa: BLE001 - report the import failure below
            raise DistillError(f"{where}._target_={path!r}: cannot import {module_name} ({e})") from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise DistillError(
            f"{where}._target_={path!r}: {module_name} has no {attr!r}"
            f"{did_you_mean(attr, names, prefix=module_name + '.')}"
        )
    return getattr(module, attr)


@functools.cache
def arguments(target: Callable) -> Arguments:
    """The keyword arguments a config may give ``target``, including those its ``**kwargs`` forward."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: nothing can be said
        return Arguments({}, open=True)
    hints, owner = _hints(target), dotted_name(target)
    params, spread = {}, None
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            spread = p.name
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = Param(hints.get(p.name, Any), owner)
    if spread is None:
        return Arguments(params, open=False)
    receivers = forwarded(target, spread)
    if receivers is None:
        return Arguments(params, open=True)
    is_open = False
    for callee, filled in receivers:
        inner = arguments(callee)
        is_open = is_open or inner.open
        for name, param in inner.params.items():
            if name not in filled:
                params.setdefault(name, param)
    return Arguments(params, open=is_open)


def _hints(target: Callable) -> dict[str, Any]:
    """The resolved type hints of ``target``'s arguments; one that cannot be resolved (a name imported
    only for type checkers) is left out, so it accepts any value."""
    if dataclasses.is_dataclass(target):
        fn, namespace = target, vars(importlib.import_module(target.__module__))
    else:
        fn = defining_class(target).__dict__["__init__"] if isinstance(target, type) else target
        fn = inspect.unwrap(fn)
        namespace = getattr(fn, "__globals__", {})
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - a name that does not resolve: take the others one by one
        return _hints_one_by_one(getattr(fn, "__annotations__", {}), namespace)


def _hints_one_by_one(annotations: dict, namespace: dict) -> dict[str, Any]:
    resolved = {}
    for name, annotation in annotations.items():
        try:
            resolved[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception:  # noqa: BLE001,S112 - left out: the argument accepts any value
            continue
    return resolved
