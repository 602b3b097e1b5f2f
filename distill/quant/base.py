"""The base of our quantization plugins: a Lightning precision plugin that quantizes the student.

Lightning lets a run have one precision plugin, and a quantization plugin must still honour the
trainer's precision (``bf16-mixed`` autocast on these CPUs). So ours wraps the plugin Lightning
would have built from ``trainer.precision`` and delegates every hook to it, adding two things:
``convert_module`` quantizes the student (never the frozen teacher, which the DistillationModule
holds outside its children), and ``finalize`` turns the trained student into the model that is
evaluated and exported. Lightning's own ``BitsandbytesPrecision`` refuses CPU and quantizes every
linear layer of the LightningModule, so it cannot be used here.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision


def base_precision(precision: str | None, device: str = "cpu") -> Precision:
    """The plugin Lightning itself would use for ``trainer.precision``."""
    precision = str(precision or "32-true")
    if precision in ("bf16-mixed", "16-mixed"):
        return MixedPrecision(precision, device)
    if precision in ("32-true", "32"):
        return Precision()
    raise ValueError(
        f"quantization plugins support trainer.precision 32-true, bf16-mixed or 16-mixed, got {precision!r}"
    )


class QuantPlugin(Precision):
    """Delegates precision to ``inner``; subclasses quantize the student in ``quantize``."""

    name = "none"
    # True: ``finalize`` needs the student as trained (adapters unmerged, e.g. QLoRA dequantizes its
    # base before merging); False: it gets the finished plain model (masks baked, adapters merged).
    finalize_before_merge = False

    def __init__(self, precision: str | None = "32-true", device: str = "cpu"):
        super().__init__()
        self.inner = base_precision(precision, device)
        self.precision = self.inner.precision

    # -- what subclasses implement -------------------------------------------------
    def quantize(self, student: torch.nn.Module) -> None:
        """Quantize the student in place (called once, when the strategy sets the model up)."""

    def finalize(self, student: torch.nn.Module) -> torch.nn.Module:
        """The model to evaluate and export after training (e.g. adapters merged, weights converted)."""
        return student

    def callbacks(self) -> list:
        """Lightning callbacks the student's fit needs for this plugin (e.g. a step to start quantizing at)."""
        return []

    def check_steps(self, max_steps: int | None) -> None:
        """Refuse (DistillError) a plugin setting that ``trainer.max_steps`` makes meaningless."""

    def export_extra(self, student: torch.nn.Module, out_dir: Path) -> dict:
        """Write any extra artefacts (e.g. a packed low-bit checkpoint) next to the HF export;
        returns metrics to add to metrics.json (sizes, skipped layers ...)."""
        return {}

    def report(self) -> dict:
        """What the plugin did, for the log and the report (e.g. layers quantized and skipped)."""
        return {"quant": self.name}

    # -- Lightning hooks -----------------------------------------------------------
    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        student = getattr(module, "student", module)
        if not getattr(student, "_distill_quantized", False):
            self.quantize(student)
            student._distill_quantized = True
        return self.inner.convert_module(module)

    def forward_context(self):
        return self.inner.forward_context()

    @contextmanager
    def train_step_context(self) -> Generator[None, None, None]:
        with self.inner.train_step_context():
            yield

    @contextmanager
    def val_step_context(self) -> Generator[None, None, None]:
        with self.inner.val_step_context():
            yield

    @contextmanager
    def test_step_context(self) -> Generator[None, None, None]:
        with self.inner.test_step_context():
            yield

    @contextmanager
    def predict_step_context(self) -> Generator[None, None, None]:
        with self.inner.predict_step_context():
            yield

    def convert_input(self, data: Any) -> Any:
        return self.inner.convert_input(data)

    def convert_output(self, data: Any) -> Any:
        return self.inner.convert_output(data)

    def pre_backward(self, tensor, module):
        return self.inner.pre_backward(tensor, module)

    def backward(self, tensor, model, optimizer, *args, **kwargs):
        return self.inner.backward(tensor, model, optimizer, *args, **kwargs)

    def optimizer_step(self, optimizer, model, closure, **kwargs):
        return self.inner.optimizer_step(optimizer, model=model, closure=closure, **kwargs)

    def clip_gradients(self, optimizer, clip_val=0.0, gradient_clip_algorithm=None):
        return self.inner.clip_gradients(optimizer, clip_val, gradient_clip_algorithm)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)
