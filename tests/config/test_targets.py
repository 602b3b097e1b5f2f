"""A ``_target_``'s schema is its signature, with ``**kwargs`` followed to the callable that receives them."""

from __future__ import annotations

from typing import Any

import pytest

from distill.config.targets import arguments, load_target
from distill.errors import DistillError


class Engine:
    def __init__(self, width: int, depth: int = 2, rate: float | None = None):
        self.width, self.depth, self.rate = width, depth, rate


class TunedEngine(Engine):
    def __init__(self, *args, tuned: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.tuned = tuned


def engine_factory(name: str, **kwargs) -> Engine:
    return Engine(width=8, **kwargs)  # width is the factory's own business: not a config key


def imported_inside(**options):
    from tests.config.test_targets import Engine as Local

    return Local(**options)


def opaque(**kwargs):
    return kwargs  # stored, not passed on: any key may be meant


def spread_to_self(self_like, **kwargs):
    return self_like.build(**kwargs)  # a receiver only known at run time


def test_plain_signature():
    args = arguments(Engine)
    assert set(args.params) == {"width", "depth", "rate"} and not args.open
    assert args.params["depth"].hint is int and args.params["rate"].hint == float | None
    assert args.params["width"].owner == "tests.config.test_targets.Engine"


def test_kwargs_followed_to_the_call_that_receives_them():
    args = arguments(engine_factory)
    assert set(args.params) == {"name", "depth", "rate"} and not args.open  # width is filled by the factory
    assert args.params["depth"].owner == "tests.config.test_targets.Engine"  # ranges are filed under the declarer
    assert args.params["name"].owner == "tests.config.test_targets.engine_factory"


def test_kwargs_followed_through_super_and_imports_inside_the_body():
    assert set(arguments(TunedEngine).params) == {"tuned", "width", "depth", "rate"}
    assert set(arguments(imported_inside).params) == {"width", "depth", "rate"}


@pytest.mark.parametrize("fn", [opaque, spread_to_self])
def test_kwargs_that_cannot_be_followed_stay_open(fn):
    assert arguments(fn).open


def test_real_targets_are_covered_through_their_factories():
    from_stdlib = load_target("distill.data.datamodule.from_stdlib", "data")
    args = arguments(from_stdlib)
    assert {"max_docs", "seq_len", "batch_size", "val_fraction", "filters", "slurm"} <= set(args.params)
    assert "source" not in args.params and not args.open  # the factory gives the source itself
    assert args.params["seq_len"].owner == "distill.data.datamodule.TextDataModule"
    ptq = arguments(load_target("distill.quant.ptq.PTQPlugin", "quant"))  # *args, **kwargs -> QATPlugin
    assert {"weight_bits", "group_size"} <= set(ptq.params) and ptq.params["weight_bits"].owner.endswith("QATPlugin")
    code = arguments(load_target("distill.data.filters.code.code_stage", "data.filters.code"))
    assert {"name", "max_line_length", "min_chars_per_token"} <= set(code.params)
    assert "exclusion_writer" not in code.params  # code_stage builds the writer from exclusion_dir


def test_an_unresolvable_hint_accepts_anything():
    def fn(model: NotImportedAnywhere, size: int = 1):  # noqa: F821 - a name only type checkers would see
        return model, size

    params = arguments(fn).params
    assert params["model"].hint is Any and params["size"].hint is int


@pytest.mark.parametrize(
    "path, message",
    [
        (
            "distill.losses.objective.Objectiv",
            ("distill.losses.objective has no 'Objectiv'; did you mean distill.losses.objective.Objective?"),
        ),
        ("no_such_package.thing", "cannot import no_such_package"),
        (3, "expected a dotted path to a class or function"),
        ("Objective", "expected a dotted path to a class or function"),
    ],
)
def test_a_bad_target_is_named(path, message):
    with pytest.raises(DistillError, match=message.replace(".", r"\.").replace("?", r"\?")) as err:
        load_target(path, "loss")
    assert str(err.value).startswith(f"loss._target_={path!r}: ")
