"""The run's teacher, resolved once: one object that every step asks instead of the config.

It knows its kind (``live``: a model run on every batch; ``cache``: top-k log-probabilities
written by ``distill-cache``; ``none``: black-box data), its directory, its weights when the run
needs them (to run it, or to prune the student from it), and what the training module queries
(``scorer``: a ``Teacher`` or a ``CachedTeacher``, both answering ``scores(...)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from distill.errors import DistillError

log = logging.getLogger(__name__)

KINDS = ("live", "cache", "none")  # teacher.backend
SEVERAL = "several"  # teachers=[...]: ``members`` hold one source each (distill.run.teachers)


@dataclass
class TeacherSource:
    kind: str
    path: str | None = None  # the model directory: teacher.path, or the cached from-scratch teacher
    model: object | None = None  # its weights, loaded when this run needs them
    history: list[dict] = field(default_factory=list)  # the from-scratch teacher's training curve, if trained now
    scorer: object | None = None  # what the training module queries: Teacher | CachedTeacher | None
    # how to get the weights (load teacher.path, or train/fetch the from-scratch teacher) when first needed
    loader: Callable[[], tuple[object, list[dict]]] | None = field(default=None, repr=False)
    # several teachers: one source per entry, its normalized weight, and the one representation terms pair with
    members: list[TeacherSource] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    paired: int = 0

    @property
    def live(self) -> bool:
        return self.kind == "live"

    @property
    def live_model(self):
        """The model the run executes (live kind only): what the memory counts first and ``teacher.*`` measures
        (several teachers: the first one's, when it is live)."""
        if self.kind == SEVERAL:
            return self.members[0].live_model
        return self.model if self.live else None

    @property
    def paired_model(self):
        """The live model hidden-state and attention terms compare with (several teachers: the paired one)."""
        return self.members[self.paired].live_model if self.kind == SEVERAL else self.live_model

    @property
    def cache(self):
        """The offline cache (``TeacherCache``) this run reads, if any (several teachers: no single one)."""
        return None if self.kind == SEVERAL else getattr(self.scorer, "cache", None)

    @property
    def cache_manifest(self) -> dict | None:
        return self.cache.manifest if self.cache is not None else None

    def load_weights(self):
        """The teacher's weights (loaded or trained once, then kept); several teachers: the first one's."""
        if self.kind == SEVERAL:
            self.model = self.members[0].load_weights()
            self.path = self.members[0].path
            return self.model
        if self.model is None:
            if self.loader is None:
                raise DistillError("teacher=none has no teacher weights")
            self.model, self.history = self.loader()
        self.path = self.path or getattr(self.model, "name_or_path", None)
        return self.model

    def model_dir(self) -> str | None:
        """The teacher's directory, producing the from-scratch teacher if nothing has yet (its
        weights are not kept: a caller that only needs the directory, e.g. a scoring filter)."""
        if self.kind == SEVERAL:
            return self.members[0].model_dir()
        if self.path is None and self.loader is not None:
            model, _ = self.loader()
            self.path = model.name_or_path
        return self.path

    def release_weights(self) -> None:
        """A cached teacher whose weights were read only to prune the student from: never run."""
        for member in self.members:
            member.release_weights()
        if self.members:
            self.model = self.members[0].model
        if self.kind == "cache" and self.model is not None:
            log.info("teacher weights were read only to initialise the pruned student; the teacher is never run")
            self.model = None
