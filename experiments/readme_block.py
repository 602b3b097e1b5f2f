"""The generated block of a README, between two marker lines: read it, or write it anew.

The studies' summarize.py scripts and headline.py write their tables between markers, so the rest
of each README stays hand-written; ``--check`` compares the block with what the metrics give.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def current(readme: Path, begin: str, end: str) -> str:
    """The text between the markers (empty when the README has none)."""
    text = readme.read_text()
    return text.split(begin, 1)[-1].split(end, 1)[0].strip() if begin in text else ""


def write(readme: Path, begin: str, end: str, block: str) -> None:
    """Replace the text between the markers with ``block``."""
    head, rest = readme.read_text().split(begin, 1)
    readme.write_text(f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}")


def summarize(
    argv: list[str],
    readme: Path,
    begin: str,
    end: str,
    block: Callable[[], str],
    collect: Callable[[Path], None],
    before_write: Callable[[], None] | None = None,
) -> int:
    """A study's summarize.py: ``[RUNS_DIR]`` copies each run's metrics beside the README first
    (``collect``); ``--check`` exits 1 when the README's block differs from ``block()``; otherwise
    ``before_write()`` (e.g. a plot) and the block is written and printed."""
    args = [a for a in argv if not a.startswith("--")]
    if args:
        collect(Path(args[0]))
    text = block()
    if "--check" in argv:
        return 0 if current(readme, begin, end) == text else 1
    if before_write is not None:
        before_write()
    write(readme, begin, end, text)
    print(text)
    return 0
