"""Throughput of the data-quality filters on the Python stdlib, one process (so MB/s is per core).

Rows: the code filter (without and with the chars/token rule, the latter with a BPE trained here
on a slice of the corpus), datatrove's heuristic prose filters (Gopher quality + repetition, C4,
FineWeb) one by one and chained, on the code corpus and on real prose (the help topics of
``pydoc_data/topics.py``), then exact and MinHash dedup end to end (their ``prepare``: hashing /
signatures, buckets, clusters; one shard). Filters run in-process on documents held in memory, so
reading and writing JSONL is not counted; dedup reads its materialised JSONL. Asserts nothing.

    python benchmarks/filter_throughput.py                 # the whole stdlib (~12 MB of .py)
    python benchmarks/filter_throughput.py --max-docs 100  # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datatrove.data import Document  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.filters import (  # noqa: E402
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402
from datatrove.utils.logging import logger  # noqa: E402

from distill.data.filters.code import CodeQualityFilter  # noqa: E402
from distill.data.filters.dedup import ExactDedup, MinhashDedup  # noqa: E402
from distill.data.filters.stage import FilterContext  # noqa: E402
from distill.data.tokenizer import train_bpe  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages"}


def code_corpus(max_docs: int | None) -> list[Document]:
    files = sorted(p for p in STDLIB.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(STDLIB).parts))
    docs = [Document(text=p.read_text(errors="replace"), id=str(p.relative_to(STDLIB))) for p in files]
    return [d for d in docs if d.text.strip()][:max_docs]


def prose_corpus(max_docs: int | None) -> list[Document]:
    from pydoc_data.topics import topics  # the stdlib's help() pages: real English prose

    return [Document(text=t, id=k) for k, t in sorted(topics.items())][:max_docs]


def megabytes(docs: list[Document]) -> float:
    return sum(len(d.text.encode()) for d in docs) / 1e6


def time_steps(steps, docs: list[Document]) -> tuple[float, int]:
    """Seconds to stream ``docs`` through ``steps`` (chained generators) and the number kept."""
    start = time.perf_counter()
    data = iter([Document(text=d.text, id=d.id) for d in docs])  # fresh copies: filters add metadata
    for step in steps:
        data = step.run(data, rank=0, world_size=1)
    kept = sum(1 for _ in data)
    return time.perf_counter() - start, kept


def prose_steps():
    # FineWeb's own settings (datatrove/examples/fineweb.py): C4 without the terminal-punctuation rule
    return [
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
    ]


def filter_rows(code: list[Document], prose: list[Document], tokenizer: str) -> list[tuple]:
    rows = []
    runs = [
        ("code filter, no tokenizer", [CodeQualityFilter()], code, "code"),
        ("code filter + chars/token", [CodeQualityFilter(tokenizer=tokenizer)], code, "code"),
    ]
    for corpus, docs in (("code", code), ("prose", prose)):
        runs += [(f"  {type(s).__name__}", [s], docs, corpus) for s in prose_steps()]
        runs.append(("prose pipeline (4 chained)", prose_steps(), docs, corpus))
    for name, steps, docs, corpus in runs:
        time_steps(steps, docs[:5])  # warm-up: spacy / tokenizer loading is not throughput
        seconds, kept = time_steps(steps, docs)
        rows.append((name, corpus, len(docs), megabytes(docs) / seconds, len(docs) / seconds, kept))
    return rows


def dedup_rows(code: list[Document], work: Path) -> list[tuple]:
    with JsonlWriter(str(work / "in"), output_filename="${rank}.jsonl.gz") as writer:
        for d in code:
            writer.write(d, rank=0)

    def run(steps, name, input_dir):
        LocalPipelineExecutor(
            [JsonlReader(str(input_dir)), *steps], tasks=1, workers=1, logging_dir=str(work / "logs" / name)
        ).run()

    rows = []
    for stage in (ExactDedup(), MinhashDedup()):
        ctx = FilterContext(work_dir=work / stage.name, tasks=1, run=run)
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # each datatrove task logs to stderr
            stage.prepare(ctx, work / "in")
        seconds = time.perf_counter() - start
        drops = sum(p.read_text().count("_duplicate") for p in (work / stage.name).rglob("decisions/*.json"))
        rows.append(
            (
                f"{stage.name} prepare ({seconds:.1f} s)",
                "code",
                len(code),
                megabytes(code) / seconds,
                len(code) / seconds,
                len(code) - drops,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-docs", type=int, default=None, help="use only the first N files / topics")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir for chars/token (default: train a BPE)")
    args = parser.parse_args()
    logger.remove()  # datatrove's per-step log lines would bury the table

    code, prose = code_corpus(args.max_docs), prose_corpus(args.max_docs)
    print(
        f"code: {len(code)} stdlib .py files, {megabytes(code):.1f} MB; "
        f"prose: {len(prose)} pydoc topics, {megabytes(prose):.2f} MB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = args.tokenizer
        if tokenizer is None:
            tokenizer = str(Path(tmp) / "tok")
            train_bpe([d.text for d in code[:200]], vocab_size=8000, out_dir=Path(tokenizer))
        rows = filter_rows(code, prose, tokenizer) + dedup_rows(code, Path(tmp))

    print(f"\n{'step':<34} {'corpus':<6} {'docs':>5} {'MB/s/core':>10} {'docs/s':>8} {'kept':>5}")
    for name, corpus, n, mbps, dps, kept in rows:
        print(f"{name:<34} {corpus:<6} {n:>5} {mbps:>10.2f} {dps:>8.1f} {kept:>5}")


if __name__ == "__main__":
    main()
