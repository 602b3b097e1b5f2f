"""Shared fixtures: offline hub, an isolated cache, a composed-config run dir, and a helper to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2`: one thread per worker, and for the commands it starts, so two workers share two
    # cores instead of four spinning OpenMP threads fighting over them. Set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
# fixtures shared across test folders (the chat tokenizer: data/chat, eval, on-policy)
pytest_plugins = ["tests.data.chat.fixtures"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n N --dist loadgroup`` each test file runs whole on one worker (its module fixtures
    are built once, its tests keep their order), and every test of tests/slurm on the same worker: they
    share the one local Slurm cluster that a session fixture starts and stops. (Tryfirst: xdist reads
    the marks in its own hook.) Without xdist the marks do nothing."""
    for item in items:
        path = Path(item.path).relative_to(REPO).as_posix()
        item.add_marker(pytest.mark.xdist_group("slurm" if path.startswith("tests/slurm/") else path))


@pytest.fixture
def out_dir(tmp_path, monkeypatch) -> Path:
    """A run dir for ``paths.output_dir`` (see tests/compose.py) plus an isolated cache and an offline
    wandb with no key; Hydra's global config is cleared afterwards."""
    from hydra.core.hydra_config import HydraConfig

    from distill.cli.resolvers import register

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a wandb key
    register()
    yield tmp_path / "run"
    HydraConfig.instance().cfg = None


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache per test session, so the smoke teacher is trained once and reused."""
    return tmp_path_factory.mktemp("distill-cache")


def run_cli(
    args: list[str], cache: Path, prog: str = "distill-train", timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run a console script as a user would, in a subprocess, with the test cache."""
    env = {**os.environ, "DISTILL_CACHE_DIR": str(cache), "HYDRA_FULL_ERROR": "0"}
    module = {
        "distill-train": "distill.cli.train",
        "distill-cache": "distill.cli.cache",
        "distill-prune": "distill.cli.prune",
        "distill-filter": "distill.cli.filter",
        "distill-eval": "distill.cli.eval",
    }[prog]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, cache_dir) -> Path:
    """One ``experiment=smoke`` run shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("smoke-run")
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
