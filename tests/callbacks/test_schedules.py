import math
from types import SimpleNamespace

import pytest

from distill.callbacks.schedules import LossSchedules, Schedule
from distill.errors import DistillError
from distill.losses.objective import Objective


def test_linear_and_cosine_reach_their_ends():
    lin = Schedule(start=4.0, end=1.0, kind="linear")
    cos = Schedule(start=4.0, end=1.0, kind="cosine")
    assert lin.value(0, 101) == 4.0 and lin.value(50, 101) == pytest.approx(2.5) and lin.value(100, 101) == 1.0
    assert (
        cos.value(0, 101) == 4.0
        and cos.value(50, 101) == pytest.approx(2.5)
        and cos.value(100, 101) == pytest.approx(1.0)
    )
    # cosine is slower than linear at the start and faster in the middle
    assert cos.value(10, 101) > lin.value(10, 101)
    assert lin.value(500, 101) == 1.0  # held after the end


def test_warmup_holds_or_ramps_then_decays_over_steps():
    held = Schedule(start=2.0, end=0.0, warmup_steps=10, steps=10)
    ramp = Schedule(start=2.0, end=0.0, warmup_steps=10, steps=10, warmup_from=0.0)
    assert [held.value(s, 100) for s in (0, 9)] == [2.0, 2.0]
    assert [ramp.value(s, 100) for s in (0, 5)] == [0.0, 1.0]
    assert held.value(15, 100) == pytest.approx(1.0) and held.value(20, 100) == 0.0
    assert Schedule(start=3.0, end=9.0, kind="constant").value(50, 100) == 3.0


def test_bad_schedules_are_refused():
    with pytest.raises(DistillError, match="kind"):
        Schedule(start=1.0, kind="exp")
    with pytest.raises(DistillError, match="cannot schedule"):
        LossSchedules({"lr": {"start": 1.0}})


class _Module(SimpleNamespace):
    def log(self, name, value):
        self.logged[name] = value


def test_callback_sets_temperature_and_weights_and_logs_them():
    objective = Objective(weights={"forward_kl": 1.0, "ce": 0.5})
    module = _Module(loss=objective, logged={})
    cb = LossSchedules(
        {
            "temperature": {"start": 4.0, "end": 1.0, "kind": "linear"},
            "ce": {"start": 0.0, "end": 1.0, "kind": "cosine"},
        }
    )
    trainer = SimpleNamespace(global_step=5, max_steps=11)
    cb.on_train_batch_start(trainer, module, None, 0)
    assert objective.temperature == pytest.approx(2.5)
    assert objective.weights["ce"] == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.5)))
    assert module.logged == {"schedule/temperature": pytest.approx(2.5), "schedule/ce": pytest.approx(0.5)}
