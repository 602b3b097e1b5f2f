"""Tokens per second on the progress bar, plus totals (and peak memory) for metrics.json."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux: ``5`` to /proc/self/clear_refs), so the
    peak read at the end is the training loop's own, not a teacher trained earlier in the process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_status_bytes(field: str) -> int | None:
    """``VmHWM`` (peak resident set) or ``VmRSS`` (current) of this process, in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Throughput(L.Callback):
    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self.tokens = 0
        self.wall_s = 0.0
        self._rate = None
        self._start = self._last = None
        self.peak_bytes: int | None = None  # CUDA: max allocated; CPU: peak resident set of the process
        self.peak_kind = "none"
        self.start_bytes: int | None = None
        self._before = (0, 0.0)  # tokens and seconds of the attempts before a resume (from the checkpoint)

    def state_dict(self) -> dict:
        """Totals so far, so a resumed run reports the whole run's tokens and training time."""
        now = time.perf_counter()
        return {"tokens": self.tokens, "wall_s": self._before[1] + (now - self._start if self._start else 0.0)}

    def load_state_dict(self, state: dict) -> None:
        self._before = (int(state["tokens"]), float(state["wall_s"]))
        self.tokens, self.wall_s = self._before  # also when the checkpoint was already at max_steps

    def on_train_start(self, trainer, pl_module):
        self.tokens, self._rate = self._before[0], None
        self._cuda = trainer.strategy.root_device.type == "cuda"
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        self._rss = not self._cuda and reset_peak_rss()
        self.start_bytes = proc_status_bytes("VmRSS") if self._rss else None  # libraries, data, models
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        n = batch[0].numel() * trainer.world_size
        self.tokens += n
        rate = n / max(now - self._last, 1e-9)
        self._rate = rate if self._rate is None else self.smoothing * self._rate + (1 - self.smoothing) * rate
        self._last = now
        pl_module.log("tokens_per_s", self._rate, prog_bar=True, on_step=True, on_epoch=False, sync_dist=False)

    def on_train_end(self, trainer, pl_module):
        self.wall_s = self._before[1] + time.perf_counter() - self._start
        if self._cuda:
            self.peak_bytes, self.peak_kind = torch.cuda.max_memory_allocated(trainer.strategy.root_device), "cuda"
        elif self._rss:
            self.peak_bytes, self.peak_kind = proc_status_bytes("VmHWM"), "rss"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0
