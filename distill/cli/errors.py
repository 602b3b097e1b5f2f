"""Turn user-caused errors into one line on stderr and a non-zero exit.

Hydra prints its own multi-line report and hides the exception; we ask it to re-raise
(HYDRA_FULL_ERROR) and print one line ourselves. Set DISTILL_TRACEBACK=1 for the full trace.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from distill.errors import DistillError

EXIT_USAGE = 2


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
    return " ".join(parts)


def _user_error(exc: BaseException) -> BaseException | None:
    """The DistillError (or Hydra/OmegaConf config error) behind ``exc``, if any."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    seen = exc
    while seen is not None:
        if isinstance(seen, DistillError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return exc
    return None


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
