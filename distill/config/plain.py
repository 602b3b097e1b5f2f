"""The composed config as plain Python values, every interpolation resolved: what the checks read.

Resolving key by key (rather than ``OmegaConf.to_container(resolve=True)`` at once) is what lets a
mandatory value left at ``???`` or an interpolation that cannot resolve be named by its own key.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.errors import DistillError


def plain(cfg: DictConfig, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``cfg`` as dicts, lists and scalars; the top-level keys in ``skip`` are left out."""
    return {str(key): _value(cfg, key, str(key)) for key in cfg if key not in skip}


def join(path: str, key: object) -> str:
    """The dotted name of ``key`` under ``path`` (``loss`` + ``temperature``)."""
    return f"{path}.{key}" if path else str(key)


def _value(parent: DictConfig | ListConfig, key, path: str) -> Any:
    if OmegaConf.is_missing(parent, key):
        raise DistillError(f"{path} is missing (???): give it a value, e.g. on the command line {path}=...")
    try:
        value = parent[key]
    except OmegaConfBaseException as e:
        own = e
        while own is not None and not isinstance(own, DistillError):  # a resolver's own message (${required:...})
            own = own.__cause__ or own.__context__
        if own is not None:
            raise own from None
        raw = parent._get_node(key)._value()  # the interpolation as written
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise DistillError(f"{path}={raw!r}: cannot resolve ({reason})") from None
    if isinstance(value, DictConfig):
        return {str(k): _value(value, k, join(path, k)) for k in value}
    if isinstance(value, ListConfig):
        return [_value(value, i, f"{path}[{i}]") for i in range(len(value))]
    return value
