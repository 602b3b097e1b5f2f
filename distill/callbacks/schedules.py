"""Schedules for the objective's temperature and term weights, as one Lightning callback.

Each schedule names what it drives (``temperature`` or a term such as ``forward_kl``)
and a shape: ``constant``, ``linear`` or ``cosine`` from ``start`` to ``end`` over
``steps`` (default: the rest of the run), after ``warmup_steps`` during which the value is
held at ``start``, or ramped linearly up to ``start`` from ``warmup_from`` when given. Values are set before
every training step and logged as ``schedule/<name>``.

Written by hand: Lightning schedules only optimizer learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L

from distill.errors import DistillError
from distill.losses.objective import TERMS

KINDS = ("constant", "linear", "cosine")


@dataclass
class Schedule:
    start: float
    end: float | None = None
    kind: str = "linear"
    steps: int | None = None  # length of the decay after warm-up; None = until max_steps
    warmup_steps: int = 0
    warmup_from: float | None = None  # None: hold ``start`` during warm-up

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DistillError(f"schedule kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.warmup_steps < 0 or (self.steps is not None and self.steps < 1):
            raise DistillError(
                f"schedule steps must be positive (steps={self.steps}, warmup_steps={self.warmup_steps})"
            )

    def value(self, step: int, max_steps: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_from is None:
                return self.start
            return self.warmup_from + (self.start - self.warmup_from) * step / self.warmup_steps
        end = self.start if self.end is None or self.kind == "constant" else self.end
        span = self.steps or max(1, max_steps - 1 - self.warmup_steps)  # the last step (max_steps - 1) reaches end
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "linear":
            return self.start + (end - self.start) * progress
        return end + (self.start - end) * 0.5 * (1 + math.cos(math.pi * progress))


class LossSchedules(L.Callback):
    """``schedules``: ``{name: {start, end, kind, steps, warmup_steps, warmup_from}}`` where
    name is ``temperature`` or a loss term (its weight)."""

    def __init__(self, schedules: dict | None = None):
        self.schedules = {}
        for name, spec in dict(schedules or {}).items():
            if spec is None:
                continue
            if name != "temperature" and name not in TERMS:
                raise DistillError(f"cannot schedule {name!r}: choose temperature or a loss term {list(TERMS)}")
            self.schedules[name] = Schedule(**dict(spec))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        objective = pl_module.loss
        for name, schedule in self.schedules.items():
            value = schedule.value(trainer.global_step, trainer.max_steps)
            if name == "temperature":
                if value <= 0:
                    raise DistillError(
                        f"the temperature schedule reached {value} at step {trainer.global_step}; it must stay > 0"
                    )
                objective.temperature = value
            else:
                objective.weights[name] = max(0.0, value)
            pl_module.log(f"schedule/{name}", value)
