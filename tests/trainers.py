"""A Lightning ``Trainer`` for the tests that fit a module directly: on the CPU and quiet (no logger,
checkpoints, progress bar or model summary), so a test's output and working dir hold only what it checks."""

from __future__ import annotations

import lightning as L

QUIET = dict(
    accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
)


def quiet_trainer(**kwargs) -> L.Trainer:
    """``L.Trainer(**kwargs)`` with ``QUIET``'s settings wherever ``kwargs`` leaves them out."""
    return L.Trainer(**{**QUIET, **kwargs})
