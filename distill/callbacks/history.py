"""Keeps every logged training metric in memory, whatever logger is configured, for the report."""

from __future__ import annotations

import lightning as L


class LossHistory(L.Callback):
    def __init__(self, prefix: str = "train/"):
        self.prefix = prefix
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)}
        if row:
            self.rows.append({"step": trainer.global_step, **row})
