"""A NaN/Inf loss or gradient skips the step (weights untouched) and is counted; N in a row stop the run."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.losses.objective import ce_only
from distill.student.scratch import build_llama
from tests.trainers import quiet_trainer

VOCAB = 50


class FlakyLoss:
    """CE, but NaN on the given batch numbers (counted across calls)."""

    def __init__(self, nan_at: set[int]):
        self.inner, self.nan_at, self.calls = ce_only(), nan_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args):
        terms = self.inner(*args)
        if self.calls in self.nan_at:
            terms["loss"] = terms["loss"] * float("nan")
        self.calls += 1
        return terms


class Snapshots(L.Callback):
    def __init__(self):
        self.changed = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = [p.detach().clone() for p in module.student.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = list(module.student.parameters())
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(self.before, after)))


def _fit(module, batches: int, max_steps: int, callbacks=()):
    torch.manual_seed(0)
    data = torch.randint(0, VOCAB, (batches * 2, 9))
    loader = DataLoader([(row[:-1], row[1:]) for row in data], batch_size=2)
    trainer = quiet_trainer(max_steps=max_steps, callbacks=list(callbacks))
    trainer.fit(module, loader)
    return trainer


def _module(loss, max_bad_steps=3):
    torch.manual_seed(0)
    student = build_llama(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, eos_token_id=0)
    return DistillationModule(student, loss, VOCAB, max_steps=6, max_bad_steps=max_bad_steps)


def test_nan_loss_steps_are_skipped_and_counted():
    module, snaps = _module(FlakyLoss({1, 2})), Snapshots()
    trainer = _fit(module, batches=10, max_steps=6, callbacks=[snaps])
    assert module.guard.skipped == 2
    assert snaps.changed[:4] == [True, False, False, True]  # the two NaN batches left the weights as they were
    assert trainer.global_step == 6
    assert all(torch.isfinite(p).all() for p in module.student.parameters())


def test_nan_gradient_is_dropped_before_the_optimizer():
    module, snaps = _module(ce_only()), Snapshots()
    weight = module.student.get_input_embeddings().weight
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 2 else grad

    weight.register_hook(poison)
    _fit(module, batches=4, max_steps=4, callbacks=[snaps])
    assert module.guard.skipped == 1
    assert snaps.changed == [True, False, True, True]


def test_too_many_bad_steps_in_a_row_stop_with_one_line():
    module = _module(FlakyLoss(set(range(2, 100))), max_bad_steps=3)
    with pytest.raises(DistillError, match=r"3 steps in a row had a non-finite loss .*last good checkpoint"):
        _fit(module, batches=10, max_steps=8)
    assert module.guard.skipped == 3
