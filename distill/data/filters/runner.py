"""Run the configured filter stages over a corpus with datatrove, cached and resumable.

The corpus is first written as ``tasks`` gzip JSONL shards (streamed: it is never held whole).
Stages then run in datatrove passes ``JsonlReader -> per-document steps -> JsonlWriter``; a stage
that needs the whole corpus first (``needs_prepare``) ends the pass before it, so it prepares on
the materialised output of everything earlier. Every pass runs on the configured executor (local
processes or SLURM jobs) and datatrove skips shards that finished in an earlier, interrupted run.

The result lives in ``<cache_dir>/filtered/<key>/`` (``docs/`` shards, ``filter_stats.json``,
``excluded/`` when dropped documents are kept), where the key hashes the input and every stage's
settings: the next run with the same data and filters starts training at once. Work in progress
is in ``<key>.work/`` and the finished result is renamed into place, so a killed run never
leaves a result that a later run would trust.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from distill.cache import clean_leftovers, fingerprint, partial_name, replace_dir
from distill.data.filters.slurm_executor import check_submit_host, run_on_slurm, slurm_executor_kwargs
from distill.data.filters.stage import FilterContext, FilterStage, scores_with_run_teacher
from distill.data.sources import Document
from distill.errors import DistillError

log = logging.getLogger(__name__)
FORMAT = "filtered-v2"  # v2: the code filter gets the run's tokenizer (v1 results skipped chars/token)


@dataclass
class ExecutorSpec:
    """``data.executor`` and its settings: local processes, or SLURM array jobs (datatrove)."""

    kind: str = "local"
    tasks: int = 4
    workers: int = -1  # local processes; -1 = one per CPU core
    slurm: dict = field(default_factory=dict)  # data.slurm: datatrove executor keywords and sbatch options
    poll_s: float = 30.0  # longest wait between looks at SLURM jobs' completion markers
    slurm_kwargs: dict = field(init=False, default_factory=dict)  # ``slurm`` as SlurmPipelineExecutor takes it

    def __post_init__(self):
        if self.kind not in ("local", "slurm"):
            raise DistillError(f"data.executor must be local or slurm, got {self.kind!r}")
        if self.tasks < 1:
            raise DistillError(f"data.filter_tasks must be >= 1, got {self.tasks}")
        if self.kind == "slurm":  # a wrong key fails here, when the data module is built, not after the first pass
            self.slurm_kwargs = slurm_executor_kwargs(self.slurm)


@dataclass
class FilterResult:
    docs_dir: Path
    stats: dict
    key: str

    def documents(self) -> Iterator[Document]:
        for path in sorted(self.docs_dir.glob("*.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    yield Document(record["id"], record["text"])


def filter_documents(
    docs: Iterable[Document],
    stages: dict[str, FilterStage],
    *,
    input_key: str,
    cache_dir: str | Path,
    executor: ExecutorSpec | None = None,
    keep_excluded: bool = False,
    tokenizer_path: str | None = None,
    teacher_path: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    source_skipped: dict | None = None,
) -> FilterResult:
    """Filter ``docs`` through ``stages`` (in order); returns the cached result."""
    executor = executor or ExecutorSpec()
    quiet_datatrove()
    stages = {name: stage for name, stage in stages.items() if stage is not None}
    # the teacher is part of the result only where a stage scores with it: distill-filter (which has no
    # teacher unless a filter needs one) and distill-train (which always has one) must share the key
    key = fingerprint(
        FORMAT,
        input_key,
        [(n, s.config()) for n, s in stages.items()],
        tokenizer_path,
        teacher_path if scores_with_run_teacher(stages.values()) else None,
        keep_excluded,
    )
    final = Path(cache_dir).expanduser() / "filtered" / key
    if (final / "filter_stats.json").is_file():
        log.info("filtered data: cached %s", final)
        return FilterResult(final / "docs", json.loads((final / "filter_stats.json").read_text()), key)
    if executor.kind == "slurm":
        check_submit_host()
    work = final.with_name(key + ".work")
    n_in = materialise(docs, work / "input", executor.tasks)
    plan = Plan(work, executor, keep_excluded)
    ctx_args = dict(
        tasks=executor.tasks, tokenizer_path=tokenizer_path, teacher_path=teacher_path, device=device, seed=seed
    )
    out_dir = plan.run_stages(stages, work / "input", ctx_args)
    stats = plan.stats(n_in, count_docs(out_dir), source_skipped or {})
    publish(work, out_dir, final, stats, keep_excluded)
    return FilterResult(final / "docs", stats, key)


def quiet_datatrove() -> None:
    """datatrove prints every task's full stats to the console at INFO; in a training run that buries
    the run's own log. Keep its warnings and errors on the console, everything in its per-task log
    files (as datatrove does), and our own one-line summary. ``DISTILL_FILTER_VERBOSE=1``: all of it.
    Done by replacing datatrove's ``add_task_logger`` because that function resets loguru in every task."""
    if os.environ.get("DISTILL_FILTER_VERBOSE") == "1":
        return
    import datatrove.executor.base as base
    from loguru import logger

    def console() -> None:
        logger.remove()
        logger.add(sys.stderr, level="WARNING", format="datatrove | {level} | {message}")

    def add_task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
        console()
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        logger.add(logfile, level="DEBUG")
        return logfile

    def close_task_logger(logfile) -> None:  # datatrove's resets the console logger to DEBUG
        logger.complete()
        console()
        logfile.close()

    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    console()


# -- input ------------------------------------------------------------------------------------------------


def materialise(docs: Iterable[Document], out: Path, shards: int) -> int:
    """Write docs round-robin into ``shards`` gzip JSONL files (once; a rerun reuses them)."""
    done = out.with_name(out.name + ".done")  # beside, not inside: the reader reads every file in out
    if done.is_file():
        return int(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = [gzip.open(out / f"{i:05d}.jsonl.gz", "wt", encoding="utf-8") for i in range(shards)]
    n = 0
    try:
        for n, doc in enumerate(docs, 1):
            files[(n - 1) % shards].write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
    finally:
        for f in files:
            f.close()
    if n == 0:
        raise DistillError("no documents to filter: the data source produced none")
    done.write_text(str(n))
    return n


def count_docs(folder: Path) -> int:
    n = 0
    for path in folder.glob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            n += sum(1 for _ in f)
    return n


def has_docs(folder: Path) -> bool:
    """Whether any shard in ``folder`` holds a document (reads at most one line per shard)."""
    for path in folder.glob("*.jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            if f.readline():
                return True
    return False


def reader(folder: Path) -> JsonlReader:
    return JsonlReader(str(folder), glob_pattern="*.jsonl.gz")


# -- passes -----------------------------------------------------------------------------------------------


class Plan:
    """Groups stages into passes and runs them; remembers which steps belong to which stage."""

    def __init__(self, work: Path, executor: ExecutorSpec, keep_excluded: bool):
        self.work, self.executor, self.keep_excluded = work, executor, keep_excluded
        self.passes: list[tuple[str, list[tuple[str, int]]]] = []  # (pass name, [(stage, n steps)])
        self.skipped: list[str] = []  # stages after a pass that kept nothing: they saw no documents
        self.stage_dirs: dict[str, Path] = {}

    def run_stages(self, stages: dict[str, FilterStage], input_dir: Path, ctx_args: dict) -> Path:
        pending: list[tuple[str, list]] = []
        uses_model = False
        current = input_dir
        for i, (name, stage) in enumerate(stages.items()):
            if stage.needs_prepare and pending:  # materialise what the earlier stages keep, then prepare on it
                current = self._pass(f"pass{len(self.passes)}", current, pending, uses_model)
                pending, uses_model = [], False
            if not has_docs(current):  # an earlier pass dropped everything: nothing to prepare on or to read
                log.info("filters: no documents left before %s; it and the stages after it are skipped", name)
                self.skipped = list(stages)[i:]
                return current
            ctx = FilterContext(work_dir=self.work / "stages" / name, run=self._runner(name, stage), **ctx_args)
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            self.stage_dirs[name] = ctx.work_dir
            if getattr(stage, "bind_tokenizer", None) and ctx.tokenizer_path:
                stage.bind_tokenizer(ctx.tokenizer_path)
            if stage.needs_prepare:
                log.info("filter %s: preparing over the whole corpus", name)
                stage.prepare(ctx, current)
            steps = stage.steps(ctx)
            self._exclusions(name, steps)
            pending.append((name, steps))
            uses_model |= stage.uses_model
        return self._pass(f"pass{len(self.passes)}", current, pending, uses_model)

    def _pass(self, name: str, input_dir: Path, stages: list[tuple[str, list]], uses_model: bool) -> Path:
        out = self.work / name
        pipeline = [reader(input_dir), *[s for _, steps in stages for s in steps], JsonlWriter(str(out))]
        self.passes.append((name, [(stage, len(steps)) for stage, steps in stages]))
        self.execute(pipeline, name, one_process=uses_model)
        out.mkdir(parents=True, exist_ok=True)  # the writer creates nothing when every document was dropped
        return out

    def _runner(self, stage_name: str, stage: FilterStage):
        """``ctx.run`` for a stage's own global passes (reader + its steps, no writer)."""

        def run(steps, pass_name: str, input_dir: Path) -> None:
            self.execute([reader(input_dir), *steps], f"{stage_name}.{pass_name}", one_process=stage.uses_model)

        return run

    def _exclusions(self, stage: str, steps: list) -> None:
        """Dropped documents, with their reason, into ``excluded/<stage>`` when asked for."""
        if not self.keep_excluded:
            return
        for i, step in enumerate(steps):
            if hasattr(step, "exclusion_writer") and step.exclusion_writer is None:
                step.exclusion_writer = JsonlWriter(
                    str(self.work / "excluded" / stage), output_filename=f"{i}_${{rank}}.jsonl.gz"
                )

    def execute(self, pipeline: list, name: str, one_process: bool = False) -> None:
        logs = self.work / "logs" / name
        spec = self.executor
        if spec.kind == "slurm":
            run_on_slurm(pipeline, name, logs, tasks=spec.tasks, slurm_kwargs=spec.slurm_kwargs, poll_s=spec.poll_s)
            return
        from datatrove.executor import LocalPipelineExecutor

        # A model-scoring pass uses every core inside one process; more processes would fight over them.
        workers = 1 if one_process else (spec.workers if spec.workers > 0 else os.cpu_count() or 1)
        LocalPipelineExecutor(
            pipeline=pipeline,
            tasks=spec.tasks,
            workers=min(workers, spec.tasks),
            logging_dir=str(logs),
            start_method="fork",
        ).run()

    # -- stats ------------------------------------------------------------------------------------------
    def stats(self, n_in: int, n_out: int, source_skipped: dict) -> dict:
        stages: dict[str, dict] = {}
        for pass_name, members in self.passes:
            per_step = merged_step_stats(self.work / "logs" / pass_name)[1:-1]  # without reader and writer
            for stage, n_steps in members:
                own, per_step = per_step[:n_steps], per_step[n_steps:]
                stages[stage] = stage_stats(own)
                details = stage_details(self.stage_dirs.get(stage))
                if details:
                    stages[stage]["details"] = details
        for stage in self.skipped:
            stages[stage] = stage_stats([])
        return {
            "input": n_in,
            "kept": n_out,
            "dropped": n_in - n_out,
            "kept_fraction": n_out / n_in if n_in else 0.0,
            "stages": stages,
            "source_skipped": dict(source_skipped),
            "executor": self.executor.kind,
            "tasks": self.executor.tasks,
        }


def merged_step_stats(logs: Path) -> list[dict[str, float]]:
    """Sum datatrove's per-rank stats files (a rerun's merged stats.json misses skipped ranks)."""
    merged: list[dict[str, float]] = []
    for path in sorted((logs / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(path.read_text())):
            if i == len(merged):
                merged.append({"_name": step["name"]})
            for k, v in step["stats"].items():
                merged[i][k] = merged[i].get(k, 0) + (v["total"] if isinstance(v, dict) else v)
    return merged


def stage_details(work_dir: Path | None) -> dict:
    """What a global stage recorded about itself (the perplexity band's edges, the classifier head's
    fit): its small JSON files other than the per-document decisions, kept in the stats because the
    work dir is removed once the result is published."""
    if work_dir is None:
        return {}
    details = {}
    for path in sorted(work_dir.glob("*.json")):
        if not path.stem.startswith("decisions") and path.stat().st_size < 64_000:
            details[path.stem] = json.loads(path.read_text())
    return details


def stage_stats(steps: list[dict]) -> dict:
    if not steps:
        return {"input": 0, "kept": 0, "dropped": {}}
    dropped: dict[str, int] = {}
    for step in steps:
        reasons = {k[len("dropped_") :]: int(v) for k, v in step.items() if k.startswith("dropped_")}
        unnamed = int(step.get("dropped", 0)) - sum(reasons.values())
        if unnamed > 0:  # a block that drops without naming a reason: count it under the block's name
            reasons[step["_name"]] = reasons.get(step["_name"], 0) + unnamed
        for k, v in reasons.items():
            dropped[k] = dropped.get(k, 0) + v
    n_in = int(steps[0].get("total", 0))
    return {"input": n_in, "kept": n_in - sum(dropped.values()), "dropped": dropped}


# -- publishing -------------------------------------------------------------------------------------------


def publish(work: Path, out_dir: Path, final: Path, stats: dict, keep_excluded: bool) -> None:
    clean_leftovers(final.parent)  # results a killed run never finished publishing
    tmp = Path(tempfile.mkdtemp(prefix=partial_name(Path(f".{final.name}")).name + ".", dir=final.parent))
    os.replace(out_dir, tmp / "docs")
    if keep_excluded and (work / "excluded").is_dir():
        os.replace(work / "excluded", tmp / "excluded")
    (tmp / "filter_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    replace_dir(tmp, final)
    shutil.rmtree(work, ignore_errors=True)
