"""The memory model of a training run: bytes per device, by part. The run's fit check (before launch) and
``plan=true`` (before anything is loaded, for the devices the command line names) both call
``estimate_memory``: one model, on real weights or on weightless (meta-device) ones alike.

Exact parts (checked against the tensors after an AdamW step in the tests):
- student weights: every parameter at its element size, tied weights once; QLoRA stores the base linear
  weights in 4 bits plus an fp32 absmax per block of 64 (bitsandbytes NF4 without double quantization:
  an upper bound, double quantization saves ~0.4 bits);
- gradients: trainable parameters only, at the parameter's dtype (mixed precision keeps fp32 master
  weights, so fp32 gradients);
- optimizer: AdamW/Adam keep exp_avg and exp_avg_sq (parameter dtype) and a 4-byte ``step`` tensor per
  trainable parameter; SGD one momentum buffer; "none" nothing.
- teacher weights: the frozen teacher at its load precision (``teacher.load_in``); none with a cached teacher.

Approximate parts, linear in the micro-batch (``activations`` and ``loss buffers`` in ``activation_bytes``
and ``loss_bytes``): what autograd saves in a decoder LM with fused attention, and the logits-sized buffers
of the distillation loss; checked against the peaks of real runs on CPU (tests/cli/test_plan.py).

Strategies (per device, W processes sharing the data, ``Setup.world_size``):
- ``single``/``ddp``: everything whole; DDP also keeps its gradient buckets, a second copy of the gradients
  (torch's ``gradient_as_bucket_view`` is off by default, and Lightning leaves it so);
- ``fsdp`` (FSDP2, ``distill/sharding.py``): weights, gradients and optimizer states / W; ``fsdp gathered``
  holds what is unsharded at the peak: the root unit (embeddings, final norm, head: resharded only after
  backward) with its unsharded gradient, two blocks (the running one and the prefetched one) and one
  block's unsharded gradient; with ``shard_teacher`` the teacher / W plus its root and two blocks gathered;
- ``deepspeed`` (ZeRO stage 2, Rajbhandari et al. 2020, eq. in section 5.1): 16-bit weights whole,
  16-bit gradients and the fp32 master weights with the optimizer states / W (fp32 runs: 4-byte weights).

The peak (``total``): weights + optimizer states + gradients + the larger of activations + loss buffers
(the first gradients appear while every activation is still held) and the optimizer step's temporary
(torch's foreach AdamW on CUDA allocates one tensor per trainable parameter; on CPU one at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from distill.quant.activations_memory import activation_bytes, loss_bytes

NF4_BYTES = 0.5 + 4 / 64  # 4-bit weight + one fp32 absmax per 64 weights
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1, "none": 0}
LOAD_BYTES = {
    "fp32": 4,
    "32": 4,
    "bf16": 2,
    "fp16": 2,
    "16": 2,
    "int8": 1,
    "8bit": 1,
    "nf4": NF4_BYTES,
    "4bit": NF4_BYTES,
    "int4": NF4_BYTES,
}
STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")
TEACHER_KINDS = ("live", "cache", "none")
PARTS = (
    "student weights",
    "teacher weights",
    "gradients",
    "optimizer",
    "optimizer step",
    "activations",
    "loss buffers",
    "fsdp gathered",
)


@dataclass(frozen=True)
class Setup:
    """What decides a run's memory besides the models: the run's config (``distill.run.memory``)."""

    batch_size: int  # micro-batch per device (data.batch_size)
    seq_len: int
    vocab_size: int  # the logits' columns the loss reads (the tokenizer's tokens)
    precision: str = "32-true"
    optimizer: str = "adamw"
    quant: str = "none"  # the quant plugin's name: qlora..., qat..., none
    teacher_kind: str = "live"  # live | cache | none
    teacher_load_in: str | None = None
    top_k: int = 64  # teacher=cache: log-probabilities read per token
    strategy: str = "single"  # single | ddp | fsdp | deepspeed
    world_size: int = 1  # processes sharing the data (devices × nodes)
    shard_teacher: bool = False  # fsdp: the teacher sharded too
    chunk_size: int = 256  # loss.chunk_size
    fused_linear: bool = False  # loss.fused_linear
    device: str = "cpu"  # cpu | cuda: where the optimizer step runs (foreach temporaries on CUDA)

    @property
    def mixed(self) -> bool:
        return str(self.precision) in ("bf16-mixed", "16-mixed")

    def check(self) -> None:
        for name, value, options in (
            ("optimizer", self.optimizer.lower(), OPTIMIZER_STATES),
            ("strategy", self.strategy, STRATEGIES),
            ("teacher kind", self.teacher_kind, TEACHER_KINDS),
        ):
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}: one of {', '.join(options)}")
        if self.world_size < 1 or self.batch_size < 0 or self.seq_len < 1:
            raise ValueError(f"world_size >= 1, batch_size >= 0 and seq_len >= 1, got {self}")


def decoder_linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the linear layers other than the LM head: what QLoRA / 8-bit loading quantize."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen, out = set(), []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not head and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(module.weight)
    return out


def quantized_linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """What QLoRA stores in 4 bits: the decoder linear weights other than LoRA's own adapters."""
    adapters = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    return [w for w in decoder_linear_weights(model) if id(w) not in adapters]


def nbytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()


def model_bytes(
    model: nn.Module, linear_bytes_per_param: float | None = None, other_bytes_per_param: float | None = None
) -> float:
    """Parameter bytes (``parameters()`` yields a tied weight once); with ``linear_bytes_per_param`` the
    decoder linear weights (LoRA's adapters excepted) count at that rate (quantized loading) and the rest at
    ``other_bytes_per_param`` (or their own dtype)."""
    if linear_bytes_per_param is None:
        return float(sum(nbytes(p) for p in model.parameters()))
    linear = {id(p) for p in quantized_linear_weights(model)}
    total = 0.0
    for p in model.parameters():
        if id(p) in linear:
            total += p.numel() * linear_bytes_per_param
        else:
            total += p.numel() * (other_bytes_per_param or p.element_size())
    return total


def teacher_bytes(teacher: nn.Module, load_in: str | None) -> float:
    """The frozen teacher's weights at its load precision. A float precision (fp32, bf16) casts every
    parameter; 8-bit and 4-bit loading cover the decoder linear weights only, and the embeddings,
    norms and head stay in the dtype they were loaded in (as ``quantize_teacher`` leaves them)."""
    if load_in is None:
        return model_bytes(teacher)
    rate = LOAD_BYTES.get(str(load_in).lower())
    if rate is None:
        raise ValueError(f"unknown teacher load precision {load_in!r}: one of {', '.join(LOAD_BYTES)}")
    return model_bytes(teacher, rate, rate if rate >= 2 else None)


def trainable_params(student: nn.Module, quant: str) -> list[nn.Parameter]:
    """What gets gradients and optimizer states: QLoRA freezes the base linears (they become 4-bit)."""
    trainable = [p for p in student.parameters() if p.requires_grad]
    if quant.startswith("qlora"):
        base = {id(w) for w in quantized_linear_weights(student)}
        trainable = [p for p in trainable if id(p) not in base]
    return trainable


def block_and_root_params(model: nn.Module) -> tuple[int, int]:
    """(parameters of the largest decoder block, parameters outside the blocks): FSDP2's shard units."""
    from distill.student.blocks import decoder_blocks

    _, blocks = decoder_blocks(model)
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    return max(sizes), sum(p.numel() for p in model.parameters()) - sum(sizes)


def param_bytes(model: nn.Module) -> float:
    """Bytes per parameter of the model's (first) floating dtype."""
    p = next(model.parameters())
    return float(p.element_size())


def estimate_memory(
    student: nn.Module, teacher: nn.Module | None, setup: Setup, lora_trainable: int | None = None
) -> dict[str, float]:
    """Bytes per device of each part of ``PARTS`` and their peak (``total``), for ``setup``. ``teacher``:
    the live teacher's model (None for a cached teacher or none); ``lora_trainable``: fp32 adapter
    parameters not in the student yet."""
    setup.check()
    w, quant, strategy = setup.world_size, str(setup.quant or "none").lower(), setup.strategy
    states = OPTIMIZER_STATES[setup.optimizer.lower()]
    trainable = trainable_params(student, quant)
    n_train = sum(p.numel() for p in trainable) + (lora_trainable or 0)
    grad_bytes = sum(nbytes(p) for p in trainable) + 4 * (lora_trainable or 0)
    weights = model_bytes(student, NF4_BYTES) if quant.startswith("qlora") else model_bytes(student)
    weights += 4 * (lora_trainable or 0)
    step_tensors = 4 * len(trainable) if setup.optimizer.lower() in ("adam", "adamw") else 0
    optimizer = states * grad_bytes + step_tensors
    out = dict.fromkeys(PARTS, 0.0)
    if strategy == "deepspeed":  # ZeRO-2: 16-bit weights whole; 16-bit grads, fp32 master + states / W
        half = 2 if setup.mixed else 4
        weights = weights * half / param_bytes(student)
        out["gradients"] = n_train * half / w
        out["optimizer"] = (n_train * 4 * (states + (1 if setup.mixed else 0))) / w
    else:
        shard = w if strategy == "fsdp" else 1
        out["gradients"] = grad_bytes * (2 if strategy == "ddp" and w > 1 else 1) / shard
        out["optimizer"] = optimizer / shard
        weights /= shard
    out["student weights"] = float(weights)
    # torch's foreach AdamW (CUDA): sqrt(exp_avg_sq) for every parameter at once; on CPU one parameter at a time
    largest = max((nbytes(p) for p in trainable), default=0)
    per_step = grad_bytes if setup.device == "cuda" else largest
    out["optimizer step"] = float(per_step / (w if strategy in ("fsdp", "deepspeed") else 1)) if states else 0.0
    if teacher is not None and setup.teacher_kind == "live":
        sharded = strategy == "fsdp" and setup.shard_teacher
        out["teacher weights"] = teacher_bytes(teacher, setup.teacher_load_in) / (w if sharded else 1)
    if strategy == "fsdp" and w > 1:
        out["fsdp gathered"] = fsdp_gathered(student, teacher if setup.shard_teacher else None, setup)
    out["activations"] = activation_bytes(student, teacher if setup.teacher_kind == "live" else None, setup)
    if quant.startswith("qat"):  # fake-quantized weight copies saved for backward, one per linear
        out["activations"] += float(sum(nbytes(x) for x in decoder_linear_weights(student)))
    out["loss buffers"] = loss_bytes(student, teacher if setup.teacher_kind == "live" else None, setup)
    held = out["student weights"] + out["teacher weights"] + out["optimizer"] + out["fsdp gathered"]
    transient = max(out["activations"] + out["loss buffers"], out["optimizer step"])
    out["total"] = held + out["gradients"] + transient
    return out


def fsdp_gathered(student: nn.Module, sharded_teacher: nn.Module | None, setup: Setup) -> float:
    """What FSDP2 holds unsharded at the peak, per device (see the module docstring)."""
    block, root = block_and_root_params(student)
    b = param_bytes(student)
    total = (root + 2 * block) * b + (root + block) * b  # weights: root + two blocks; gradients: root + one
    if sharded_teacher is not None:
        total += fsdp_gathered_teacher(sharded_teacher, setup.teacher_load_in)
    return float(total)


def fsdp_gathered_teacher(teacher: nn.Module, load_in: str | None) -> float:
    """A sharded teacher's root and two blocks, gathered during its forward."""
    t_block, t_root = block_and_root_params(teacher)
    return float((t_root + 2 * t_block) * teacher_bytes_per_param(teacher, load_in))


def teacher_bytes_per_param(teacher: nn.Module, load_in: str | None) -> float:
    n = sum(p.numel() for p in teacher.parameters())
    return teacher_bytes(teacher, load_in) / max(n, 1)


def largest_micro_batch(
    student: nn.Module, teacher: nn.Module | None, setup: Setup, budget_bytes: float, lora_trainable=None, adjust=None
) -> int:
    """The largest micro-batch whose estimated peak fits ``budget_bytes`` (0: not even one row).
    ``adjust(estimate, setup) -> estimate`` adds what ``estimate_memory`` does not see (more teachers)."""

    def fits(b: int) -> bool:
        at_b = replace(setup, batch_size=b)
        estimate = estimate_memory(student, teacher, at_b, lora_trainable)
        return (adjust(estimate, at_b) if adjust else estimate)["total"] <= budget_bytes

    if not fits(1):
        return 0
    high = 1
    while fits(high * 2) and high < 2**20:
        high *= 2
    low, high = high, high * 2  # fits(low), not fits(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def format_estimate(d: dict) -> str:
    """A short table for the log: the parts that hold memory, and the peak."""
    rows = [(k, v) for k, v in d.items() if k != "total" and v]
    width = max([len(k) for k, _ in rows] + [len("peak")])
    lines = [f"{k.ljust(width)}  {v / 2**20:10.1f} MiB" for k, v in rows]
    rule = "-" * (width + 16)
    return "\n".join(
        ["estimated training memory", *lines, rule, f"{'peak'.ljust(width)}  {d['total'] / 2**20:10.1f} MiB"]
    )
