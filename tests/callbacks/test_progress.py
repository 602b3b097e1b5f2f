"""The titled progress bars: the fit's title instead of "Epoch 0/-2", optimizer steps counted to max_steps
across epochs (and under gradient accumulation), tokens/s from the Throughput callback."""

from __future__ import annotations

import io

import lightning as L
import pytest
import rich
import torch
from torch.utils.data import DataLoader

from distill.callbacks.progress import TITLES, TitledRichProgressBar, TitledTQDMProgressBar
from distill.callbacks.throughput import Throughput
from distill.distillation import DistillationModule
from distill.losses.objective import ce_only
from distill.student.scratch import build_llama
from tests.trainers import quiet_trainer

VOCAB = 50


def _fit(bar, max_steps: int, batches_per_epoch: int = 2, accumulate: int = 1) -> L.Trainer:
    """A tiny Llama trained with CE on random tokens: ``batches_per_epoch`` batches of 2 x 8 tokens."""
    torch.manual_seed(0)
    data = torch.randint(0, VOCAB, (batches_per_epoch * 2, 9))
    loader = DataLoader([(row[:-1], row[1:]) for row in data], batch_size=2)
    student = build_llama(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, eos_token_id=0)
    module = DistillationModule(student, ce_only(), VOCAB, max_steps=max_steps)
    trainer = quiet_trainer(
        enable_progress_bar=True,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
        callbacks=[Throughput(), bar],
    )
    trainer.fit(module, loader)
    return trainer


@pytest.fixture
def rich_output():
    """Rich's console, writing plain text to a buffer (the bar reconfigures rich's global console)."""
    out = io.StringIO()
    yield {"file": out, "force_terminal": False, "width": 200}
    rich.reconfigure()


def test_rich_bar_is_titled_and_counts_steps_across_epochs(rich_output):
    bar = TitledRichProgressBar(title=TITLES["student"], console_kwargs=rich_output)
    trainer = _fit(bar, max_steps=5)  # 3 epochs of 2 batches
    assert trainer.current_epoch >= 2  # the fit did span epochs
    task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
    assert (task.description, task.completed, task.total) == ("student (distilled)", 5, 5)
    text = rich_output["file"].getvalue()
    assert "student (distilled)" in text and "step 5/5" in text
    assert "tokens/s: " in text and "tokens_per_s" not in text and "it/s" not in text
    assert "loss: " in text and "train/loss" not in text
    assert "Epoch" not in text


def test_rich_bar_counts_optimizer_steps_under_gradient_accumulation(rich_output):
    bar = TitledRichProgressBar(title=TITLES["control"], console_kwargs=rich_output)
    trainer = _fit(bar, max_steps=3, batches_per_epoch=4, accumulate=2)  # 6 batches
    task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
    assert trainer.global_step == 3 and (task.completed, task.total) == (3, 3)
    assert "control (from scratch)" in rich_output["file"].getvalue()


def test_tqdm_bar_is_titled_and_counts_steps(capsys):
    bar = TitledTQDMProgressBar(title=TITLES["teacher"])
    _fit(bar, max_steps=5)
    assert bar.train_progress_bar.desc.startswith("teacher (from scratch)")
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (5, 5)
    out = capsys.readouterr().out
    assert "teacher (from scratch)" in out and "5/5" in out and "tokens/s=" in out
    assert "Epoch" not in out and "Training" not in out


def test_a_fit_bounded_by_epochs_keeps_counting_batches(rich_output):
    bar = TitledRichProgressBar(title="student", console_kwargs=rich_output)
    torch.manual_seed(0)
    data = torch.randint(0, VOCAB, (6, 9))
    loader = DataLoader([(row[:-1], row[1:]) for row in data], batch_size=2)
    student = build_llama(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, eos_token_id=0)
    trainer = quiet_trainer(enable_progress_bar=True, max_epochs=2, limit_val_batches=0, callbacks=[bar])
    trainer.fit(DistillationModule(student, ce_only(), VOCAB, max_steps=6), loader)
    task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
    assert (task.description, task.completed, task.total) == ("student · epoch 1", 3, 3)
