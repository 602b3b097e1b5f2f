"""The walk over a resolved config: each value against its type hint, its rule (``ranges``) and, for a
node or a section, the names of its keys. The first problem ends the walk with one line naming the key,
the value and what is expected: ``loss.temperature='abc': expected a number (float)``."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Annotated, Any, get_args, get_origin

from distill.config.hints import describe, elements, is_node, matches, members, strip
from distill.config.plain import join
from distill.config.ranges import RULES, KeysOf
from distill.config.schema import HINTS, NESTED, Built
from distill.config.suggest import did_you_mean
from distill.config.targets import RESERVED, arguments, dotted_name, load_target
from distill.errors import DistillError

SHOWN_KEYS = 12  # valid keys listed when none is close to a misspelt one


def show(path: str, value: object) -> str:
    """``key=value`` as a user would write it (long values cut)."""
    text = repr(value)
    return f"{path}={text if len(text) <= 60 else text[:57] + '...'}"


def check_section(value: dict, record: type, path: str) -> None:
    """A plain section against its schema record (``schema.Optim``): known keys, each of its type."""
    hints = typing.get_type_hints(record, include_extras=True)
    names = [f.name for f in dataclasses.fields(record)]
    for key, sub in value.items():
        if key in names:
            check_value(sub, hints[key], join(path, key), f"{_declared_by(record, key)}.{key}")
        elif not (getattr(record, "user_keys", False) and _users_own(key, names, value)):
            raise unknown_key(path, key, names, f"a setting of {path or 'the top level'}")


def _users_own(key: str, names: list[str], value: dict) -> bool:
    """A key of the user's own at the top level (``+note=...``, kept in run_info): one that is not close to
    a setting there, nor the name of a setting one level down (``+lr=0.1`` meant ``optim.lr``)."""
    below = [f"{section}.{key}" for section, sub in value.items() if isinstance(sub, dict) and key in sub]
    if below:
        raise DistillError(f"{key}: unknown key, not a setting of the top level; did you mean {below[0]}?")
    return not did_you_mean(key, names)


def _declared_by(record: type, name: str) -> str:
    """The record that declares a field (``Run.seed`` also for ``Eval``, which inherits it)."""
    cls = next(c for c in reversed(record.__mro__) if name in inspect.get_annotations(c))
    return f"{cls.__module__}.{cls.__qualname__}"


def check_arguments(value: dict, target, path: str, extra: dict[str, str] | None = None) -> None:
    """A dict of keyword arguments for ``target``: each key one it takes, each value of its hint."""
    args = arguments(target)
    extra = extra or {}
    for key, sub in value.items():
        if key in RESERVED:
            continue
        if key in extra:
            owner = load_target(extra[key], join(path, key))
            if key in arguments(owner).params:  # a scalar read by the run itself (student.tokenizer)
                check_arguments({key: sub}, owner, path)
            else:
                _check_block(sub, extra[key], join(path, key))
            continue
        param = args.params.get(key)
        if param is None:
            if args.open:
                continue  # **kwargs this check cannot follow: the callable itself judges the key
            raise unknown_key(path, key, [*args.params, *extra], f"an argument of {dotted_name(target)}")
        rule_key = f"{param.owner}.{key}"
        check_value(sub, HINTS[rule_key]() if rule_key in HINTS else param.hint, join(path, key), rule_key)


def check_node(node: dict, path: str, extra: dict[str, str] | None = None) -> None:
    """A ``_target_`` node: its target imports, and its keys are that callable's arguments."""
    check_arguments(node, load_target(node["_target_"], path), path, extra)


def check_value(value: Any, hint, path: str, rule_key: str) -> None:
    """One value: its schema (group, section, nested block), else its type, its rule, its elements."""
    built = _built(hint)
    if built is not None:
        return _check_group(value, built, path)
    if is_node(value):
        return check_node(value, path)
    record = _record(hint)
    if record is not None and isinstance(value, dict):
        return check_section(value, record, path)
    if not matches(value, hint):
        raise DistillError(f"{show(path, value)}: expected {describe(hint)}")
    _apply_rule(value, path, rule_key)
    if isinstance(value, dict) and rule_key in NESTED:
        return _check_block(value, NESTED[rule_key], path)
    typed = elements(value, hint)
    for suffix, sub, sub_hint in typed:
        check_value(sub, sub_hint, path + suffix, f"{rule_key}.*")
    if not typed:
        _check_nodes_within(value, path)


def unknown_key(path: str, key: str, valid: list[str], what: str, list_valid: bool = True) -> DistillError:
    """A key that is not ``what`` it should be, with the nearest valid one (or the valid ones)."""
    guess = did_you_mean(key, valid, prefix=f"{path}." if path else "")
    if not guess and list_valid:
        shown = ", ".join(sorted(valid)[:SHOWN_KEYS]) + (", ..." if len(valid) > SHOWN_KEYS else "")
        guess = f" (valid: {shown})" if valid else ""
    return DistillError(f"{join(path, key)}: unknown key, not {what}{guess}")


def _check_group(value: Any, built: Built, path: str) -> None:
    if value is None or value == {}:
        if built.optional or built.many:
            return
        raise DistillError(f"{path} is empty: choose one of its presets ({path}=<name>, configs/{path}/)")
    if not isinstance(value, dict):
        raise DistillError(f"{show(path, value)}: expected a {path} config (a preset: {path}=<name>)")
    if built.many:
        for name, entry in value.items():
            if is_node(entry):  # one without _target_ is a leftover the run skips too
                check_node(entry, join(path, name))
        return
    if not is_node(value):
        raise DistillError(f"{path} has no _target_: choose one of its presets ({path}=<name>, configs/{path}/)")
    check_node(value, path, dict(built.extra))


def _check_block(value: Any, target: str, path: str) -> None:
    """A nested dict whose keys are the arguments of ``target`` (a callable or a schema record)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise DistillError(f"{show(path, value)}: expected a mapping of settings")
    record = load_target(target, path)
    if dataclasses.is_dataclass(record):  # a schema record, or the code's own (distill.losses.spec.OnPolicy)
        return check_section(value, record, path)
    check_arguments(value, record, path)


def _apply_rule(value: Any, path: str, rule_key: str) -> None:
    rule = RULES.get(rule_key)
    if rule is None:
        return
    if isinstance(rule, KeysOf):
        bad = rule.unknown(value) if isinstance(value, dict) else []
        if bad:
            names = rule.names()
            raise unknown_key(path, bad[0], list(names), f"one of {', '.join(names)}", list_valid=False)
        return
    problem = rule.problem(value)
    if problem:
        raise DistillError(f"{show(path, value)}: {problem}")


def _check_nodes_within(value: Any, path: str) -> None:
    """``_target_`` nodes inside an untyped dict or list (``data.filters``): instantiate builds them too."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        sub_path = join(path, key) if isinstance(value, dict) else f"{path}[{key}]"
        if is_node(sub):
            check_node(sub, sub_path)
        else:
            _check_nodes_within(sub, sub_path)


def _built(hint) -> Built | None:
    if get_origin(hint) is Annotated:
        return next((m for m in get_args(hint)[1:] if isinstance(m, Built)), None)
    return None


def _record(hint) -> type | None:
    """The schema record a hint names (``Teacher``, ``Embedding | None``), if any."""
    found = [m for m in members(strip(hint)) if dataclasses.is_dataclass(m)]
    return found[0] if found else None
