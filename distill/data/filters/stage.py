"""The contract between the filter runner and the filters it runs.

A *stage* is one named entry of ``data.filters`` (``code``, ``dedup``, ``teacher_ppl`` ...). The
runner streams the corpus through datatrove passes (reader -> steps -> sharded writer). A stage
contributes per-document datatrove steps to a pass; a stage that needs to see the whole corpus
first (deduplication, a percentile band) also has ``prepare``, which the runner calls on the
materialised output of everything before it and which may run its own datatrove executors
through ``ctx.run``.

Why not plain datatrove: datatrove gives the blocks, executors, per-reason stats and skipping of
finished tasks; it has no notion of a named, configurable filter that may need a global pass, nor
of the run's tokenizer and teacher, which model-based filters need. This module adds only that.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from distill.cache import write_atomic


@dataclass
class FilterContext:
    """What a stage may use. ``run(steps, name)`` runs ``[reader over input_dir] + steps`` with the
    configured executor (local processes or SLURM) over ``tasks`` shards and returns when done;
    reruns skip shards that finished before."""

    work_dir: Path  # scratch space of this stage (kept across reruns)
    tasks: int  # shards of every pass
    run: Callable[[list[PipelineStep], str, Path], None]  # (steps, pass name, input_dir)
    tokenizer_path: str | None = None  # the run's tokenizer (chars/token, model scoring)
    teacher_path: str | None = None  # the run's teacher (a Hugging Face causal-LM dir)
    device: str = "cpu"
    seed: int = 0
    extra: dict = field(default_factory=dict)


class FilterStage:
    """One named filter. Subclasses override ``steps`` and, for a global pass, ``prepare``."""

    name: str = "filter"
    needs_prepare: bool = False  # True: the runner materialises the corpus, then calls prepare
    uses_model: bool = False  # True: the pass runs in one process (the model uses every core)

    def prepare(self, ctx: FilterContext, input_dir: Path) -> None:
        """Global work over every document in ``input_dir`` (sharded JSONL written by the runner)."""

    def steps(self, ctx: FilterContext) -> list[PipelineStep]:
        raise NotImplementedError

    def config(self) -> dict:
        """What identifies this stage's result (goes into the filtered dataset's cache key)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def scores_with_run_teacher(stages) -> bool:
    """Whether a stage scores documents with the run's teacher (no model of its own): then the run
    needs the teacher's directory, and the teacher is part of the result's cache key."""
    return any(getattr(s, "scores_with_teacher", False) and getattr(s, "model_path", None) is None for s in stages)


class Streaming(FilterStage):
    """A stage of per-document blocks only, e.g. the datatrove Gopher / C4 / FineWeb filters."""

    def __init__(self, name: str, steps: list[PipelineStep]):
        self.name = name
        self._steps = list(steps)

    def steps(self, ctx: FilterContext) -> list[PipelineStep]:
        return self._steps

    def bind_tokenizer(self, path: str | None) -> Streaming:
        """Give the run's tokenizer to the blocks that take one (the code filter's chars/token rule);
        the runner calls this on the stage, which would otherwise never reach its blocks."""
        for step in self._steps:
            if hasattr(step, "bind_tokenizer"):
                step.bind_tokenizer(path)
        return self

    def config(self) -> dict:
        return {"name": self.name, "steps": [repr_step(s) for s in self._steps]}


def repr_step(step: PipelineStep) -> dict:
    """A stable description of a block: its class and its scalar settings. Collections of strings
    are sorted: datatrove builds some from sets (FineWeb's ``stop_chars``), whose order changes
    from process to process with hash randomisation, and the description is a cache key."""
    scalars = {
        k: v
        for k, v in sorted(vars(step).items())
        if isinstance(v, (int, float, str, bool, type(None), tuple, list, set, frozenset))
        and not k.startswith("_")
        and k not in ("stats",)
    }
    return {
        "class": f"{type(step).__module__}.{type(step).__qualname__}",
        **{k: _stable_str(v) for k, v in scalars.items()},
    }


def _stable_str(v) -> str:
    if isinstance(v, (tuple, list, set, frozenset)) and all(isinstance(x, str) for x in v):
        return str(sorted(v))
    return str(v)


class DecisionFilter(BaseFilter):
    """Drops the documents a ``prepare`` pass decided to drop.

    ``decisions`` is a JSON file ``{doc_id: reason}`` listing only dropped documents; every other
    document is kept. Global filters (percentile bands, classifiers trained once) write it."""

    name = "decision"

    def __init__(self, decisions: str | Path, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.decisions_path = str(decisions)
        self._decisions: dict[str, str] | None = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._decisions is None:
            self._decisions = json.loads(Path(self.decisions_path).read_text())
        reason = self._decisions.get(doc.id)
        return True if reason is None else (False, reason)


def write_decisions(path: Path, decisions: dict[str, str]) -> None:
    """Write ``{doc_id: reason}`` atomically (a rerun never reads half a file)."""
    write_atomic(path, json.dumps(decisions))
