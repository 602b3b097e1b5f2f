"""Turn user-caused errors into one line on stderr and a non-zero exit.

Hydra prints its own multi-line report and hides the exception; we ask it to re-raise
(HYDRA_FULL_ERROR) and print one line ourselves. Set DISTILL_TRACEBACK=1 for the full trace.
When Hydra fails on a misspelt name (a key, a group, a group's option) the line ends with the
nearest valid one: "did you mean student?".
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator

from distill.config import tree
from distill.config.suggest import nearest
from distill.errors import DistillError

EXIT_USAGE = 2


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DistillError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    parts = []
    seen = exc
    while seen is not None and len(parts) < 3:
        first = next((ln.strip() for ln in str(seen).splitlines() if ln.strip()), type(seen).__name__)
        if first not in parts:
            parts.append(first)
        seen = seen.__cause__
    hint = _misspelt_name_hint(exc)
    return " ".join(parts).rstrip(".") + hint if hint else " ".join(parts)


def _user_error(exc: BaseException) -> BaseException | None:
    """The DistillError (or Hydra/OmegaConf config error) behind ``exc``, if any."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for seen in _chain(exc):
        if isinstance(seen, DistillError):
            return seen
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return exc
    return None


def _misspelt_name_hint(exc: BaseException) -> str:
    """``"; did you mean ...?"`` for Hydra's composition errors on a name that is not in the config tree:
    an unknown group option (``student=deph``) or an unknown key (``studnt=depth``, ``loss.temprature=1``)."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    for seen in _chain(exc):
        if isinstance(seen, MissingConfigException) and seen.missing_cfg_file:
            return _option_hint(seen.missing_cfg_file, seen.options)
        if isinstance(seen, (ConfigKeyError, ConfigAttributeError)) and seen.parent_node is not None and seen.key:
            return _key_hint(
                str(seen.key), str(seen.full_key or seen.key), list(seen.parent_node.keys()), _override(exc)
            )
    return ""


def _option_hint(missing: str, options) -> str:
    """``student/deph`` -> ``; did you mean student=depth?`` (else the group's options)."""
    group, _, name = missing.rpartition("/")
    options = list(options or tree.group_options(group))
    if not group or not options:
        return ""
    found = nearest(name, options)
    return f"; did you mean {group}={found}?" if found else f" (options in {group}: {', '.join(options)})"


def _key_hint(key: str, full_key: str, siblings: list, override: tuple[str | None, str | None]) -> str:
    """The nearest key beside the missing one; at the top level also the config groups (``debug``,
    ``data/filters``), which exist before an option is chosen. Keeps the rest of the user's dotted key."""
    parent = full_key[: -len(key)].rstrip(".")
    candidates = [str(k) for k in siblings if k != "hydra"]
    if not parent:
        candidates += tree.groups()
    found = nearest(key, candidates)
    written, line = override
    if found is None:  # a new key inside a section (loss.weights.jsd) is added with +, as Hydra says
        return f"; to add it: +{line}" if parent and line else ""
    rest = written[len(full_key) :] if written and written.startswith(full_key) else ""
    return f"; did you mean {parent + '.' if parent else ''}{found}{rest}?"


def _override(exc: BaseException) -> tuple[str | None, str | None]:
    """The key and the override the user wrote, from Hydra's "Could not override 'trainr.max_steps'.
    To append to your config use +trainr.max_steps=3"."""
    key = re.search(r"Could not override '([^']+)'", str(exc))
    line = re.search(r"use \+(\S+)", str(exc))
    return (key.group(1) if key else None), (line.group(1) if line else None)


def run_with_one_line_errors(app: Callable[[], object], prog: str) -> None:
    want_trace = os.environ.get("DISTILL_TRACEBACK") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - we re-raise what is not a user error
        user = _user_error(exc)
        if user is None or want_trace:
            raise
        print(f"{prog}: error: {_one_line(user)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
