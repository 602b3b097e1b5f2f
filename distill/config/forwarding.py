"""Where a callable's ``**kwargs`` go, read from its source: ``from_stdlib(max_docs, **kwargs)`` passes
them to ``TextDataModule(source=..., **kwargs)``, so ``data.seq_len`` is an argument of
``TextDataModule``. Following the call keeps every factory and wrapper covered with no list to keep
in step with the code; where the call cannot be followed the keywords stay open (any key passes).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import textwrap
from collections.abc import Callable


def defining_class(cls: type) -> type:
    """The class in ``cls``'s MRO whose ``__init__`` a call to ``cls(...)`` runs."""
    return next((c for c in cls.__mro__ if "__init__" in c.__dict__), object)


def forwarded(target: Callable, kwargs_name: str) -> list[tuple[Callable, set[str]]] | None:
    """The callables that receive ``**kwargs_name`` from ``target``, each with the argument names the
    call fills itself (a config must not give those); None when a receiver cannot be found."""
    owner = defining_class(target) if isinstance(target, type) else None
    fn = inspect.unwrap(owner.__dict__["__init__"] if owner is not None else target)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _spreads(node, kwargs_name)]
    receivers = []
    for call in calls:
        callee = _resolve(call.func, fn, owner, tree)
        if callee is None:
            return None
        receivers.append((callee, _filled(call, callee)))
    return receivers or None


def _spreads(call: ast.Call, name: str) -> bool:
    return any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == name for k in call.keywords)


def _filled(call: ast.Call, callee: Callable) -> set[str]:
    """Names the call passes itself: its keywords, and the parameters its plain positional arguments take."""
    names = {k.arg for k in call.keywords if k.arg}
    if call.args and not any(isinstance(a, ast.Starred) for a in call.args):
        try:
            params = list(inspect.signature(callee).parameters)
        except (TypeError, ValueError):
            params = []
        names.update(params[: len(call.args)])
    return names


def _resolve(expr: ast.expr, fn: Callable, owner: type | None, tree: ast.AST) -> Callable | None:
    if _is_super_init(expr):
        if owner is None:
            return None
        later = owner.__mro__[owner.__mro__.index(owner) + 1 :]
        base = next((c for c in later if "__init__" in c.__dict__), object)
        return None if base is object else base
    dotted = _dotted(expr)
    if not dotted:
        return None
    obj = _lookup(dotted[0], fn, tree)
    for attr in dotted[1:]:
        obj = getattr(obj, attr, None)
    return obj if callable(obj) else None


def _is_super_init(expr: ast.expr) -> bool:
    return (
        isinstance(expr, ast.Attribute)
        and expr.attr == "__init__"
        and isinstance(expr.value, ast.Call)
        and isinstance(expr.value.func, ast.Name)
        and expr.value.func.id == "super"
    )


def _dotted(expr: ast.expr) -> list[str]:
    """``a.b.C`` as ``["a", "b", "C"]``; empty for anything else (``self.x``, calls, subscripts)."""
    parts = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id == "self":
        return []
    return [expr.id, *reversed(parts)]


def _lookup(name: str, fn: Callable, tree: ast.AST):
    """A name as the function sees it: an import inside its body, a closure, its module, a builtin."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    try:
                        return getattr(importlib.import_module(node.module), alias.name, None)
                    except ImportError:
                        return None
    try:
        nonlocals = inspect.getclosurevars(fn).nonlocals
    except TypeError:
        nonlocals = {}
    for scope in (nonlocals, getattr(fn, "__globals__", {}), vars(builtins)):
        if name in scope:
            return scope[name]
    return None
