"""Checkpoints written atomically, loaded without running pickled code.

Lightning's ``TorchCheckpointIO`` writes a checkpoint straight to its final name, so a kill
or a full disk during the write can leave a truncated ``last.ckpt`` in place of the previous
good one. Here a checkpoint goes to a ``.partial-<host>-<pid>`` file, is flushed to disk and
renamed; a failed write removes the temp file and keeps the previous checkpoint. Loading uses
``torch.load(weights_only=True)`` (tensors and plain containers only) unless ``allow_pickle``.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from distill.cache import atomic_file
from distill.errors import DistillError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_file(path) as f:  # streamed: a large checkpoint is never held twice in memory
                torch.save(checkpoint, f)
        except OSError as e:
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__)
            raise DistillError(f"could not write checkpoint {path}: {why}; the previous checkpoint is kept") from e

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        path = Path(path)
        if not path.is_file():
            raise DistillError(f"checkpoint not found: {path}")
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=not self.allow_pickle)
        except Exception as e:  # noqa: BLE001 - a corrupt or untrusted file: one line, never a traceback
            if "Unsupported global" in str(e):  # a class or function to import: the pickle code path
                raise DistillError(
                    f"checkpoint {path} holds pickled objects beyond tensors; set allow_pickle=true "
                    "only if you trust where it came from"
                ) from e
            raise DistillError(
                f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from e
