"""The generated block of a README, between two marker lines: read it, or write it anew.

The studies' summarize.py scripts and headline.py write their tables between markers, so the rest
of each README stays hand-written; ``--check`` compares the block with what the metrics give.
"""

from __future__ import annotations

from pathlib import Path


def current(readme: Path, begin: str, end: str) -> str:
    """The text between the markers (empty when the README has none)."""
    text = readme.read_text()
    return text.split(begin, 1)[-1].split(end, 1)[0].strip() if begin in text else ""


def write(readme: Path, begin: str, end: str, block: str) -> None:
    """Replace the text between the markers with ``block``."""
    head, rest = readme.read_text().split(begin, 1)
    readme.write_text(f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}")
