"""Tokens per second on the progress bar, plus totals for metrics.json."""

from __future__ import annotations

import time

import lightning as L


class Throughput(L.Callback):
    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self.tokens = 0
        self.wall_s = 0.0
        self._rate = None
        self._start = self._last = None

    def on_train_start(self, trainer, pl_module):
        self.tokens, self._rate = 0, None
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
        self.wall_s = time.perf_counter() - self._start

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0
