"""The studies' READMEs and the top-level headline table agree with the metrics files committed beside them."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_headline_table_is_generated_from_the_committed_metrics():
    proc = _run("experiments/headline.py", "--check")
    assert proc.returncode == 0, "README.md's headline table is stale: run python experiments/headline.py --write"
    table = _run("experiments/headline.py").stdout
    assert "[quickstart](experiments/quickstart/README.md)" in table and "40.14" in table


def test_quickstart_readme_is_generated_from_its_metrics():
    proc = _run("experiments/quickstart/summarize.py", "--check")
    assert proc.returncode == 0, "experiments/quickstart/README.md is stale: run experiments/quickstart/summarize.py"
