"""Keeps every logged training metric in memory, whatever logger is configured, for the report:
the loss terms (``train/*``), the learning rate and the throughput of every step."""

from __future__ import annotations

import lightning as L


class LossHistory(L.Callback):
    def __init__(self, prefix: str = "train/"):
        self.prefix = prefix
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        row = {k: float(v) for k, v in metrics.items() if k.startswith(self.prefix)}
        if not row:
            return
        # read from the optimizer, not LearningRateMonitor: that one needs a logger, the report does not
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        if "tokens_per_s" in metrics:  # logged by the Throughput callback (smoothed)
            row["tokens_per_s"] = float(metrics["tokens_per_s"])
        self.rows.append({"step": trainer.global_step, **row})
