"""The nearest valid name for a misspelt one ("did you mean student?"), shared by the config checks and
the CLI's report of Hydra's own composition errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib's own default: "studnt" -> "student" (0.92) and "deph" -> "depth" (0.89) pass, while
# unrelated names ("bogus_key" -> "task_name", 0.44) do not, so a wrong guess is never offered.
CUTOFF = 0.6


def nearest(name: object, candidates: Iterable[object]) -> str | None:
    """The candidate most like ``name``, or None when none is close."""
    found = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=CUTOFF)
    return found[0] if found else None


def did_you_mean(name: object, candidates: Iterable[object], prefix: str = "") -> str:
    """``"; did you mean <prefix><nearest>?"``, or ``""`` when no candidate is close."""
    found = nearest(name, candidates)
    return f"; did you mean {prefix}{found}?" if found else ""
