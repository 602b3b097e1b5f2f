"""Progress bars titled with what a fit is ("student (distilled)") and counting optimizer steps to
``max_steps``, with the training throughput as tokens/s.

Lightning's bars count batches per epoch and title them ``Epoch 0/-2`` when a fit is bounded by
``max_steps`` (``max_epochs=-1``); a distillation run is bounded by steps, so these bars run once,
from 0 to ``max_steps``, across epochs. Fits bounded by epochs keep Lightning's per-epoch count.
Rich (``TitledRichProgressBar``) for terminals, tqdm (``TitledTQDMProgressBar``) for plain-text logs;
``configs/callbacks/default.yaml`` picks one.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn, ProcessingSpeedColumn
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from rich.progress import ProgressColumn
from rich.text import Text

# The title of each fit a run makes, by its role in distill.run.fit.
TITLES = {"teacher": "teacher (from scratch)", "student": "student (distilled)", "control": "control (from scratch)"}


def counts_steps(trainer) -> bool:
    """Whether the fit is bounded by optimizer steps (then the bar counts them, across epochs)."""
    return trainer.max_steps is not None and trainer.max_steps > 0


class TitledBar:
    """What both bars share: the title, the step count, and the metrics as shown."""

    def __init__(self, title: str = "training", **kwargs):
        super().__init__(**kwargs)
        self.title = title

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if counts_steps(self.trainer) else super().total_train_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Lightning's bars show batch_idx + 1: pass the step count in its place (one optimizer step may
        # take several batches under gradient accumulation, and batch_idx restarts every epoch)
        shown = trainer.global_step - 1 if counts_steps(trainer) else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, shown)

    def get_metrics(self, trainer, pl_module) -> dict:
        """Throughput first, as ``tokens/s`` (logged by ``Throughput``), then the training metrics without
        their ``train/`` prefix (the bar is the training bar); the logger's version (``v_num``) off."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        rate = items.pop("tokens_per_s", None)
        shown = {"tokens/s": f"{float(rate):,.0f}"} if rate is not None else {}
        return shown | {k.removeprefix("train/"): v for k, v in items.items()}


class _CountColumn(ProgressColumn):
    """``completed/total``, as ``step 12/20`` on the training bar of a fit bounded by steps."""

    def __init__(self, bar: TitledRichProgressBar, style):
        super().__init__()
        self.bar, self.style = bar, style

    def render(self, task) -> Text:
        total = int(task.total) if task.total not in (None, float("inf")) else "--"
        training = task.id == self.bar.train_progress_bar_id and counts_steps(self.bar.trainer)
        return Text(f"{'step ' if training else ''}{int(task.completed)}/{total}", style=self.style)


class TitledRichProgressBar(TitledBar, RichProgressBar):
    """Lightning's rich bar, titled; ``title`` is what the fit is, other arguments are Lightning's."""

    def configure_columns(self, trainer) -> list:
        """Lightning's columns, with steps counted and without it/s (tokens/s is the speed shown)."""
        return [
            _CountColumn(self, self.theme.batch_progress) if isinstance(c, BatchesProcessedColumn) else c
            for c in super().configure_columns(trainer)
            if not isinstance(c, ProcessingSpeedColumn)
        ]

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's "Epoch 0/-2"
        return self.title if counts_steps(self.trainer) else f"{self.title} · epoch {current_epoch}"

    def on_train_epoch_start(self, trainer, pl_module):
        if counts_steps(trainer) and self.train_progress_bar_id is not None:
            return  # one bar for the whole fit: Lightning would reset it to 0 every epoch
        super().on_train_epoch_start(trainer, pl_module)


class TitledTQDMProgressBar(TitledBar, TQDMProgressBar):
    """Lightning's tqdm bar, titled (plain text: for log files); arguments as ``TitledRichProgressBar``."""

    @property
    def train_description(self) -> str:  # the bar's first line, before the first epoch starts
        return self.title

    def on_train_start(self, trainer, *args):
        super().on_train_start(trainer, *args)
        self._bar_started = False

    def on_train_epoch_start(self, trainer, *args):
        # Lightning's, with the title in place of "Epoch N" (set before the bar redraws, so a log file
        # never shows the old title) and, for a fit bounded by steps, one bar for the whole fit
        if counts_steps(trainer) and self._bar_started:
            return
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        epoch = "" if counts_steps(trainer) else f" · epoch {trainer.current_epoch}"
        self.train_progress_bar.set_description(self.title + epoch, refresh=False)
        self.train_progress_bar.reset(convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0
        self._bar_started = True
