"""What the runner tests share: a tiny corpus whose fate under the code filter and exact dedup is known,
the stages, and one call of the runner on it (local executor unless told)."""

from __future__ import annotations

from pathlib import Path

from distill.data.filters.code import code_stage
from distill.data.filters.dedup import ExactDedup
from distill.data.filters.runner import ExecutorSpec, filter_documents
from distill.data.sources import Document

LOCAL = ExecutorSpec("local", tasks=2, workers=1)  # workers=1: ranks run in this process, one after another

SHORT_A, SHORT_B, SHORT_C = "x = 1\ny = 2\n", "def f():\n    return 3\n", "import os\nprint(os.sep)\n"
LONG = "z = [" + ", ".join(map(str, range(60))) + "]\n"  # one line of ~230 characters

# doc i goes to shard i % 2; dedup keeps the first copy in (shard, position) order, so each
# original sits in the same shard as its copy, before it.
CORPUS = [
    Document("a", SHORT_A),  # shard 0: kept
    Document("b", SHORT_B),  # shard 1: kept
    Document("a-copy", SHORT_A),  # shard 0: exact_duplicate of a
    Document("b-copy", SHORT_B),  # shard 1: exact_duplicate of b
    Document("long", LONG),  # shard 0: max_line_length
    Document("long-copy", LONG),  # shard 1: max_line_length (dedup never sees it)
    Document("c", SHORT_C),  # shard 0: kept
]
KEPT = {"a": SHORT_A, "b": SHORT_B, "c": SHORT_C}


def stages(max_line_length: int = 100) -> dict:
    return {"code": code_stage(max_line_length=max_line_length), "exact_dedup": ExactDedup()}


def run(cache: Path, docs=CORPUS, **kwargs):
    kwargs = {"input_key": "corpus-v1", "executor": LOCAL, "stages": stages(), **kwargs}
    return filter_documents(docs, kwargs.pop("stages"), cache_dir=cache, **kwargs)
