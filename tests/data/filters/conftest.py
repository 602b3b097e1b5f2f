"""Small real data and a local FilterContext for the filter-stage tests."""

from __future__ import annotations

import importlib
import inspect
import random
import string
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from distill.data.filters.stage import FilterContext

# English prose that ships with Python: the module docstrings of the standard library.
PROSE_MODULES = (
    "json os collections itertools argparse subprocess csv string random heapq tempfile difflib "
    "pickle re shelve zipfile gzip sqlite3 unittest xml"
).split()


@pytest.fixture(scope="session")
def prose() -> list[str]:
    docs = [inspect.getdoc(importlib.import_module(m)) or "" for m in PROSE_MODULES]
    return [d[:1200] for d in docs if len(d) > 300]


def noise_text(seed: int, n: int = 600) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits + string.punctuation + " ") for _ in range(n))


@pytest.fixture
def noise():
    return noise_text


@pytest.fixture
def make_ctx(tmp_path):
    """``make_ctx(docs, tasks)``: the docs written as ``tasks`` JSONL shards (doc i in shard i % tasks)
    and a FilterContext whose ``run`` executes passes locally, as the runner does."""

    def make(docs: list[Document], tasks: int = 2, **kwargs) -> tuple[FilterContext, Path]:
        input_dir = tmp_path / "input"
        with JsonlWriter(str(input_dir)) as writer:
            for i, doc in enumerate(docs):
                writer.write(doc, rank=i % tasks)

        def run(steps, name: str, folder: Path) -> None:
            from datatrove.executor import LocalPipelineExecutor

            LocalPipelineExecutor(
                pipeline=[JsonlReader(str(folder)), *steps],
                tasks=tasks,
                workers=1,
                logging_dir=str(tmp_path / "logs" / name),
            ).run()

        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        return FilterContext(work_dir=work, tasks=tasks, run=run, **kwargs), input_dir

    return make


def apply_steps(steps, docs: list[Document]) -> list[Document]:
    data = iter(docs)
    for step in steps:
        data = step(data)
    return list(data)


@pytest.fixture
def apply():
    """``apply(steps, docs)``: the documents a stage's per-document steps keep."""
    return apply_steps
