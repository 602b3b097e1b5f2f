"""Exact and MinHash dedup on a small sharded corpus of stdlib files with planted duplicates."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sysconfig
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from distill.data.filters.dedup import ExactDedup, MinhashDedup, ShardDecisionFilter
from distill.data.filters.stage import FilterContext

os.environ["HF_HUB_OFFLINE"] = "1"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def doc(name: str, id: str | None = None, edit=lambda t: t) -> Document:
    return Document(text=edit((STDLIB / name).read_text()), id=id or name)


def near(text: str) -> str:
    """A few words changed (identifiers renamed), as a fork or a lightly edited copy would be."""
    return text.replace("drop_whitespace", "strip_spaces").replace("fix_sentence_endings", "fix_ends")


def reindent(text: str) -> str:
    return "\n".join("  " + line + "   " for line in text.splitlines())


# shard -> documents. textwrap.py has an exact copy under its own id (shard 2), a copy re-indented
# under another id (shard 1) and a near copy (shard 1); everything else is distinct.
SHARDS = [
    [doc("textwrap.py"), doc("glob.py"), doc("bisect.py")],
    [
        doc("fnmatch.py"),
        doc("textwrap.py", "textwrap-reindented", reindent),
        doc("shlex.py"),
        doc("textwrap.py", "textwrap-near", near),
    ],
    [doc("textwrap.py"), doc("colorsys.py"), doc("sched.py")],
]


def write_shards(folder: Path, shards: list[list[Document]]) -> None:
    """Shard r is file ``0000r.jsonl.gz``; the reader gives rank r the r-th sorted file."""
    with JsonlWriter(str(folder), output_filename="${rank}.jsonl.gz") as w:
        for rank, docs in enumerate(shards):
            for d in docs:
                w.write(Document(text=d.text, id=d.id), rank=rank)


def make_ctx(tmp: Path, tasks: int) -> FilterContext:
    def run(steps, name, input_dir):
        LocalPipelineExecutor(
            [JsonlReader(str(input_dir)), *steps], tasks=tasks, workers=1, logging_dir=str(tmp / "logs" / name)
        ).run()

    return FilterContext(work_dir=tmp / "work", tasks=tasks, run=run)


def apply(stage, ctx: FilterContext, input_dir: Path, out: Path) -> tuple[list[list[str]], dict]:
    """prepare, then the filter pass; returns kept ids per shard and the filter's dropped_* counts."""
    stage.prepare(ctx, input_dir)
    stats = LocalPipelineExecutor(
        [JsonlReader(str(input_dir)), *stage.steps(ctx), JsonlWriter(str(out), output_filename="${rank}.jsonl.gz")],
        tasks=ctx.tasks,
        workers=1,
        logging_dir=str(out.parent / f"logs-{out.name}"),
    ).run()
    counts = {k: v.total for k, v in stats.stats[1].stats.items() if k.startswith("dropped")}
    kept = [
        [json.loads(line)["id"] for line in gzip.open(out / f"{r:05d}.jsonl.gz", "rt")]
        if (out / f"{r:05d}.jsonl.gz").exists()
        else []
        for r in range(ctx.tasks)
    ]
    return kept, counts


def decisions(ctx: FilterContext) -> dict[str, bytes]:
    return {str(p.relative_to(ctx.work_dir)): p.read_bytes() for p in sorted(ctx.work_dir.rglob("decisions/*.json"))}


@pytest.fixture
def corpus(tmp_path) -> Path:
    write_shards(tmp_path / "in", SHARDS)
    return tmp_path / "in"


def test_exact_dedup_keeps_first_copy_even_under_a_shared_id(corpus, tmp_path):
    ctx = make_ctx(tmp_path, tasks=3)
    kept, counts = apply(ExactDedup(), ctx, corpus, tmp_path / "out")
    assert kept == [
        ["textwrap.py", "glob.py", "bisect.py"],
        ["fnmatch.py", "shlex.py", "textwrap-near"],
        ["colorsys.py", "sched.py"],
    ]
    assert counts == {"dropped": 2, "dropped_exact_duplicate": 2}


def test_exact_dedup_without_normalisation_keeps_reindented_copy(corpus, tmp_path):
    ctx = make_ctx(tmp_path, tasks=3)
    kept, counts = apply(ExactDedup(normalize=False), ctx, corpus, tmp_path / "out")
    assert "textwrap-reindented" in kept[1] and kept[2] == ["colorsys.py", "sched.py"]
    assert counts["dropped_exact_duplicate"] == 1
    assert ExactDedup(normalize=False).config() == {"stage": "ExactDedup", "name": "exact_dedup", "normalize": False}


def test_minhash_drops_near_and_exact_copies_and_is_deterministic(corpus, tmp_path):
    ctx = make_ctx(tmp_path, tasks=3)
    stage = MinhashDedup()
    kept, counts = apply(stage, ctx, corpus, tmp_path / "out")
    assert kept == [["textwrap.py", "glob.py", "bisect.py"], ["fnmatch.py", "shlex.py"], ["colorsys.py", "sched.py"]]
    assert counts == {"dropped": 3, "dropped_near_duplicate": 3}
    first = decisions(ctx)
    # a rerun (finished shards skipped) and a rerun from scratch decide the same
    stage.prepare(ctx, corpus)
    assert decisions(ctx) == first
    shutil.rmtree(ctx.work_dir)
    shutil.rmtree(tmp_path / "logs")
    stage.prepare(ctx, corpus)
    assert decisions(ctx) == first
    assert stage.config() == {
        "stage": "MinhashDedup",
        "name": "minhash",
        "n_grams": 5,
        "num_buckets": 14,
        "hashes_per_bucket": 8,
        "seed": 1,
    }


def test_minhash_keeps_distinct_documents(tmp_path):
    write_shards(tmp_path / "in", [[doc("glob.py"), doc("bisect.py")], [doc("shlex.py"), doc("queue.py")]])
    ctx = make_ctx(tmp_path, tasks=2)
    kept, counts = apply(MinhashDedup(), ctx, tmp_path / "in", tmp_path / "out")
    assert kept == [["glob.py", "bisect.py"], ["shlex.py", "queue.py"]]
    assert "dropped" not in counts


def test_decision_filter_refuses_a_pass_that_does_not_match_prepare(tmp_path):
    (tmp_path / "00000.json").write_text(json.dumps({"1": ["b", "exact_duplicate"]}))
    docs = [Document(text="a", id="a"), Document(text="b", id="b"), Document(text="c", id="c")]
    assert [d.id for d in ShardDecisionFilter(tmp_path).run(iter(docs), rank=0)] == ["a", "c"]
    with pytest.raises(RuntimeError, match="prepare saw 'b'"):
        list(ShardDecisionFilter(tmp_path).run(iter(docs[1:]), rank=0))  # shifted by an earlier filter
    with pytest.raises(RuntimeError, match="decision for index 1"):
        list(ShardDecisionFilter(tmp_path).run(iter(docs[:1]), rank=0))  # shard shorter than prepare saw
