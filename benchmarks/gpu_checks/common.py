"""What every check of the GPU suite shares: the context (device, dry mode, shapes), model builders from
the real-shape configs, timing, peak memory, and the one KD training step all checks run.

Models are random-weight Hugging Face models built from ``tests/fixtures/configs/<family>/config.json``
(real architectures, no weights: speed and memory do not depend on the values). Only modules that
import without hydra, omegaconf, bitsandbytes or torchao are imported here; a check that needs one of
those imports it itself (``require``), so a missing package skips that check alone.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
STUDENT, TEACHER = "llama-3.2-1b", "llama-3.1-8b"  # the issue's ~1B student and ~8B teacher
KD = {"forward_kl": 1.0, "ce": 0.5}  # configs/loss/forward_kl.yaml, the default objective
GiB = 2**30

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, keyed by a substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM (HBM3): "NVIDIA H100 80GB HBM3"
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)

# Dry mode: the same architectures (GQA ratio, rope scaling, tied embeddings) at toy widths. Widths and
# head_dim are multiples of 64 (the bitsandbytes CPU kernels), and of 32 (the QAT group size).
DRY = {
    STUDENT: dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=1, head_dim=64),
    TEACHER: dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=64),
}
DRY_COMMON = dict(num_hidden_layers=2, vocab_size=512, max_position_embeddings=256)


class Skip(Exception):
    """A check that cannot run here (a package, a kernel or a device is missing): the suite records
    ``status: skipped`` with the reason, plus whatever the check measured before it stopped."""

    def __init__(self, why: str, **partial):
        super().__init__(why)
        self.partial = partial


def require(package: str, why: str = "") -> None:
    """Skip the check when ``package`` is not installed (the GPU machine lacks what no wheel carried) or
    does not import here (e.g. its compiled library does not match this CUDA)."""
    reason = f" ({why})" if why else ""
    if importlib.util.find_spec(package) is None:
        raise Skip(f"{package} not installed{reason}")
    try:
        importlib.import_module(package)
    except (ImportError, OSError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise Skip(f"{package} does not import{reason}: {first}") from None


@dataclass
class Context:
    """Where and at what size the checks run. ``dry``: toy shapes on the CPU, a couple of steps."""

    dry: bool
    device: torch.device
    seq_len: int = 2048
    warmup: int = 2
    steps: int = 5
    memory_fraction: float = 0.7  # of the device's memory the planned micro-batch may fill
    max_batch: int = 8

    @classmethod
    def make(cls, dry: bool) -> Context:
        if dry:
            return cls(dry=True, device=torch.device("cpu"), seq_len=64, warmup=1, steps=2)
        if not torch.cuda.is_available():
            raise SystemExit("gpu_suite: no CUDA device (use --dry for the CPU smoke run)")
        return cls(dry=False, device=torch.device("cuda"))

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def config(self, family: str):
        """The family's config.json (toy-sized in dry mode)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(CONFIGS / family))
        if self.dry:
            for key, value in {**DRY[family], **DRY_COMMON}.items():
                setattr(config, key, value)
        return config

    def autocast(self):
        """bf16 autocast, as ``trainer.precision=bf16-mixed`` (the GPU default) runs the step."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def memory_bytes(self) -> float | None:
        return float(torch.cuda.get_device_properties(self.device).total_memory) if self.cuda else None

    def free(self) -> None:
        """Between checks: drop what the last one left, so peaks do not carry over."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def device_info(ctx: Context) -> dict:
    """Name, memory and the bf16 peak the MFU is computed against (None where the table lacks it)."""
    if not ctx.cuda:
        return {"name": "cpu", "peak_bf16_flops": None, "peak_source": "none: MFU is not computed on CPU"}
    name = torch.cuda.get_device_name(ctx.device)
    key, peak = next(((k, v) for k, v in PEAK_BF16 if k in name), (None, None))
    return {
        "name": name,
        "capability": list(torch.cuda.get_device_capability(ctx.device)),
        "memory_bytes": ctx.memory_bytes(),
        "peak_bf16_flops": peak,
        "peak_source": f"datasheet dense bf16, table key {key!r}" if key else "device not in the table",
    }


def build(ctx: Context, family: str, dtype: torch.dtype, seed: int = 0):
    """A random-weight causal LM of ``family``'s architecture, built on the context's device."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(ctx.device):
        return AutoModelForCausalLM.from_config(ctx.config(family), dtype=dtype)


def token_batches(ctx: Context, vocab: int, batch: int, count: int, seed: int = 1) -> list[tuple]:
    """``count`` (inputs, targets) pairs of random token ids, ``batch`` rows of ``seq_len`` tokens."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, vocab, (batch, ctx.seq_len + 1), generator=g).to(ctx.device)
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


def setup_for(ctx: Context, vocab: int, batch: int, objective, teacher_load_in=None, quant: str = "none"):
    """The memory model's ``Setup`` of the step these checks run (distill.quant.memory)."""
    from distill.quant.memory import Setup

    return Setup(
        batch_size=batch,
        seq_len=ctx.seq_len,
        vocab_size=vocab,
        precision="bf16-mixed",
        quant=quant,
        teacher_kind="live",
        teacher_load_in=teacher_load_in,
        chunk_size=objective.chunk_size,
        fused_linear=objective.fused_linear,
        device=ctx.device.type,
    )


def planned_batch(ctx: Context, student, teacher, setup, dry_batch: int = 2) -> int:
    """The largest micro-batch the memory model fits into ``memory_fraction`` of the device (capped),
    the batch ``plan=true`` would report; a fixed toy batch in dry mode."""
    if ctx.dry:
        return dry_batch
    from distill.quant.memory import largest_micro_batch

    fit = largest_micro_batch(student, teacher, setup, ctx.memory_fraction * ctx.memory_bytes())
    if fit < 1:
        raise RuntimeError("the memory model fits no micro-batch of one row on this device")
    return min(fit, ctx.max_batch)


class Peak:
    """Peak memory over a block. CUDA: the caching allocator's ``max_memory_allocated`` (every live
    tensor, so the resident models count, as in the plan's total). CPU (dry mode): the growth of the
    resident set (VmHWM - VmRSS before) plus ``resident`` bytes already held (models, optimizer states)."""

    def __init__(self, ctx: Context, resident: float = 0.0):
        self.ctx, self.resident, self.bytes = ctx, resident, None

    def __enter__(self) -> Peak:
        gc.collect()
        if self.ctx.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            from distill.callbacks.throughput import proc_status_bytes, reset_peak_rss

            trim_heap()
            self._cpu = reset_peak_rss()
            self.base = proc_status_bytes("VmRSS") or 0
        return self

    def __exit__(self, *exc) -> None:
        if self.ctx.cuda:
            torch.cuda.synchronize()
            self.bytes = float(torch.cuda.max_memory_allocated())
        else:
            from distill.callbacks.throughput import proc_status_bytes

            high = proc_status_bytes("VmHWM") if self._cpu else None
            self.bytes = self.resident + float(max((high or 0) - self.base, 0))


def trim_heap() -> None:
    """Hand freed heap back to the OS (glibc), so the next block's allocations show in the resident set
    instead of reusing what an earlier block freed (as ``benchmarks/fused_linear_memory.py`` does)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def tensor_bytes(*objects) -> float:
    """Bytes of the distinct tensors in models (parameters, buffers) and optimizers (states)."""
    seen, total = set(), 0
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
        else:  # an optimizer
            tensors = [t for s in obj.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        for t in tensors:
            if t.device.type != "meta" and (t.data_ptr(), t.device) not in seen:
                seen.add((t.data_ptr(), t.device))
                total += t.numel() * t.element_size()
    return float(total)


def median_seconds(ctx: Context, fn, warmup: int | None = None, steps: int | None = None) -> float:
    """Median wall seconds of ``fn()`` after ``warmup`` calls; on CUDA timed by events around each call
    (the host may run ahead of the device, so the wall clock alone would be wrong)."""
    for _ in range(ctx.warmup if warmup is None else warmup):
        fn()
    ctx.sync()
    times = []
    for _ in range(ctx.steps if steps is None else steps):
        if ctx.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class KDStep:
    """One training step of ``distill-train``'s loop, from the project's own parts: the student's and the
    live teacher's outputs (``distill.forward.model_outputs``, the ``Teacher`` wrapper), the ``Objective``,
    backward, gradient clipping at 1.0 (``configs/trainer/default.yaml``) and fused AdamW
    (``distill.distillation.adamw``), under bf16 autocast. Without a teacher it is the CE step."""

    def __init__(self, ctx: Context, student, teacher, objective, batches, vocab: int, lr: float = 1e-5):
        from distill.distillation import adamw
        from distill.teacher.module import Teacher

        self.ctx, self.student, self.objective, self.batches, self.vocab = ctx, student, objective, batches, vocab
        self.teacher = None if teacher is None else Teacher(teacher)
        params = [p for p in student.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = adamw(groups, lr=lr, betas=(0.9, 0.95))
        self.calls, self.last_loss = 0, None

    def loss(self, inputs, targets):
        from distill.forward import model_outputs

        with self.ctx.autocast():
            s = model_outputs(self.student, inputs, self.vocab, self.objective)
            t = None if self.teacher is None else self.teacher.scores(inputs, None, self.objective, self.vocab)
            return self.objective(s, t, targets)["loss"]

    def __call__(self) -> None:
        inputs, targets = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        loss = self.loss(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.detach()

    def tokens(self) -> int:
        inputs = self.batches[0][0]
        return inputs.numel()


def finite_loss(step: KDStep) -> float:
    value = float(step.last_loss)
    if not torch.isfinite(torch.tensor(value)):
        raise RuntimeError(f"non-finite loss {value}")
    return value


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b
