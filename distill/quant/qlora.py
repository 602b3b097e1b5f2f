"""QLoRA: the student's frozen base linears are stored as 4-bit NF4 bitsandbytes layers while
its LoRA adapters train in full precision.

``quantize`` runs when the strategy sets the model up (after ``apply_lora``, before the model
is moved to its device): every frozen ``nn.Linear`` inside the decoder blocks -- the PEFT
``base_layer``s and any other frozen linears there -- becomes a ``bnb.nn.Linear4bit`` quantized
from its current weights. Embeddings and the LM head stay as they are. ``finalize``
dequantizes the base weights back to fp32 ``nn.Linear``s and merges the adapters, so the
evaluated and exported model is a plain HF model whose logits are those of the trained
QLoRA model (the adapters trained against the NF4 base, so the merge uses that base, not
the original fp32 weights). With ``export="adapters"`` the PEFT adapters are also written
on their own (``out_dir/adapters``).

Pitfalls of bitsandbytes 0.50 on CPU, handled here:
- after a forward with no grad in eval mode, ``Linear4bit`` repacks its weights in place for
  an AVX512-BF16 inference kernel that autograd does not see through: later training steps
  give silently wrong LoRA gradients. ``support_avx512bf16_for_cpu = False`` on every layer
  prevents the repack.
- the CPU kernels need in/out features that are multiples of 64.
Lightning's ``BitsandbytesPrecision`` is not used: it refuses CPU and would quantize every
linear of the LightningModule, the adapters included.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import QuantState, _convert_weight_packed_for_cpu_inverse, dequantize_4bit
from bitsandbytes.nn import Params4bit
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from distill.errors import DistillError
from distill.quant.base import QuantPlugin
from distill.student.blocks import decoder_blocks
from distill.student.lora import LINEAR, merge_lora

log = logging.getLogger(__name__)

MULTIPLE = 64  # the bitsandbytes CPU kernels' granularity for in/out features
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
EXPORTS = ("merged", "adapters")


# -- bitsandbytes layers -----------------------------------------------------------


class FrozenLinear4bit(bnb.nn.Linear4bit):
    """A frozen ``Linear4bit`` that also loads its own state dict back (bnb saves the packed
    weight and its quant state but cannot load them into a quantized layer), so a Lightning
    checkpoint of a QLoRA run resumes."""

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "weight"
        stats = {k[len(key) + 1 :]: v for k, v in state_dict.items() if k.startswith(key + ".")}
        if key in state_dict and stats:
            self.weight = Params4bit.from_prequantized(
                state_dict[key], dict(stats), device=self.weight.device, module=self
            )
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(key)}
            if prefix + "bias" in state_dict and self.bias is not None:
                self.bias.data = state_dict[prefix + "bias"].to(self.bias.device)
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def features(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D (weight stored as in x out)."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features


def bad_shapes(named: list[tuple[str, nn.Module]]) -> list[str]:
    """'name (in -> out)' for each layer the bitsandbytes kernels cannot take."""
    out = []
    for name, layer in named:
        n_in, n_out = features(layer)
        if n_in % MULTIPLE or n_out % MULTIPLE:
            out.append(f"{name} ({n_in} -> {n_out})")
    return out


def listing(names: list[str], limit: int = 4) -> str:
    """The first few names, then how many more: an error message stays one readable line."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def quantization_device(layer: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where bitsandbytes quantizes: the run's CUDA device when there is one (its kernels then run
    there, and the strategy's later move is a no-op), else where the weights already are."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.device(device)
    return layer.weight.device


def keep_code_map_real() -> None:
    """bitsandbytes caches the 8-bit code map of double quantization in a module-level dict, on the
    device of the first tensor it ever quantized. If that was a weightless (meta) model (``plan=true``,
    the real-shape builders), every later real quantization in the process fails with "Cannot copy
    out of meta tensor". Seeding the cache on the CPU first keeps it real (it is copied to each
    tensor's device on use, meta included)."""
    cache = bnb.functional.name2qmap
    if "dynamic" not in cache:
        cache["dynamic"] = bnb.functional.create_dynamic_map()


def to_linear4bit(
    layer: nn.Module,
    *,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
    device=None,
) -> FrozenLinear4bit:
    """A frozen 4-bit copy of ``layer`` (nn.Linear or Conv1D), quantized from its current weights."""
    n_in, n_out = features(layer)
    weight = layer.weight.detach()
    weight = weight.t() if isinstance(layer, Conv1D) else weight
    q = FrozenLinear4bit(
        n_in,
        n_out,
        bias=layer.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=double_quant,
        quant_type=quant_type,
        device="meta",
    )
    # Without this, an eval forward under no_grad repacks the weights for a CPU inference kernel
    # that autograd cannot differentiate through: later LoRA gradients are silently wrong.
    q.support_avx512bf16_for_cpu = False
    keep_code_map_real()
    q.weight = Params4bit(
        weight.contiguous(), requires_grad=False, compress_statistics=double_quant, quant_type=quant_type, module=q
    )._quantize(quantization_device(layer, device))
    if layer.bias is not None:
        q.bias = nn.Parameter(layer.bias.detach().to(q.weight.device), requires_grad=False)
    q.is_conv1d = isinstance(layer, Conv1D)  # finalize gives a Conv1D back: PEFT merges it transposed
    q.train(layer.training)
    return q


def dequantized_weight(layer: bnb.nn.Linear4bit) -> torch.Tensor:
    """The fp32 (out, in) weight a 4-bit layer computes with."""
    data, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # a bnb layer that did repack (not ours): undo it
        data, state = _convert_weight_packed_for_cpu_inverse(data, state)
        layer.weight.data = data
    return dequantize_4bit(data, state).float()


def to_linear(layer: bnb.nn.Linear4bit) -> nn.Module:
    """A full-precision (fp32) layer with the dequantized weights of a 4-bit one."""
    weight = dequantized_weight(layer)
    bias = None if layer.bias is None else layer.bias.detach().float()
    if getattr(layer, "is_conv1d", False):
        out = Conv1D(weight.shape[0], weight.shape[1])
        out.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
        out.bias = nn.Parameter(bias if bias is not None else torch.zeros(weight.shape[0]), requires_grad=False)
    else:
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        out.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            out.bias = nn.Parameter(bias, requires_grad=False)
    return out.train(layer.training)


def quant_state_tensors(state: QuantState | None) -> list[torch.Tensor]:
    """The tensors a 4-bit weight needs besides its packed data (scales, codebooks)."""
    if state is None:
        return []
    tensors = [state.absmax, state.code]
    if getattr(state, "nested", False):
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def tensor_bytes(tensors, seen: set | None = None) -> int:
    """Bytes of ``tensors`` as stored, each distinct tensor once (tied weights, shared codebooks)."""
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        key = (t.data_ptr(), t.nbytes, t.device)
        if t.device.type != "meta" and key not in seen:
            seen.add(key)
            total += t.nbytes
    return total


def layer_bytes(layer: nn.Module, seen: set | None = None) -> int:
    """Stored bytes of a (possibly 4-bit) linear layer's weight and bias."""
    tensors = [p for p in (layer.weight, layer.bias) if p is not None]
    tensors += quant_state_tensors(getattr(layer.weight, "quant_state", None))
    return tensor_bytes(tensors, seen)


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def block_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear layers inside the decoder blocks (nn.Linear or Conv1D, not yet quantized)."""
    prefix, _ = decoder_blocks(model)
    return [
        (n, m)
        for n, m in model.named_modules()
        if n.startswith(prefix + ".") and isinstance(m, LINEAR) and not isinstance(m, bnb.nn.Linear4bit)
    ]


# -- the plugin --------------------------------------------------------------------


class QLoRAPlugin(QuantPlugin):
    """Trains LoRA adapters on a 4-bit (NF4) frozen base; see the module docstring."""

    name = "qlora"
    finalize_before_merge = True

    def __init__(
        self,
        precision: str | None = "32-true",
        device: str = "cpu",
        quant_type: str = "nf4",
        double_quant: bool = True,
        compute_dtype: str = "bfloat16",
        export: str = "merged",
    ):
        super().__init__(precision, device)
        if quant_type not in QUANT_TYPES:
            raise DistillError(f"quant=qlora: quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
        if str(compute_dtype) not in COMPUTE_DTYPES:
            raise DistillError(
                f"quant=qlora: compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}"
            )
        if export not in EXPORTS:
            raise DistillError(f"quant=qlora: export must be one of {', '.join(EXPORTS)}, got {export!r}")
        self.device, self.quant_type, self.double_quant = device, quant_type, bool(double_quant)
        self.compute_dtype, self.export = str(compute_dtype), export
        self._report: dict = {}
        self._adapters: tuple[dict, object] | None = None  # (state dict, PEFT config) taken before merging

    def targets(self, student: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[str]]:
        """(layers to quantize, layers left in full precision) -- or a DistillError, before any change.

        The LoRA base layers must fit the bitsandbytes kernels. Other frozen linears in the blocks
        (those LoRA does not target, a MoE router) are quantized when they fit, else kept as they are."""
        tuned = [m for m in student.modules() if isinstance(m, BaseTunerLayer)]
        if not isinstance(student, PeftModel) or not tuned:
            raise DistillError("quant=qlora needs LoRA adapters: set student.lora.r > 0")
        base_ids = {id(m.get_base_layer()) for m in tuned}
        frozen = [
            (n, m)
            for n, m in block_linears(student)
            if not any(p.requires_grad for p in m.parameters()) and "lora_" not in n
        ]
        bad = bad_shapes([(n, m) for n, m in frozen if id(m) in base_ids])
        if bad:
            raise DistillError(
                f"quant=qlora: bitsandbytes 4-bit layers need in/out features that are multiples of "
                f"{MULTIPLE}; these LoRA base layers are not: {listing(bad)}"
            )
        skipped = bad_shapes(frozen)
        chosen = [(n, m) for n, m in frozen if not bad_shapes([(n, m)])]
        return chosen, skipped

    def quantize(self, student: nn.Module) -> None:
        chosen, skipped = self.targets(student)
        seen_before, seen_after = set(), set()
        before = after = 0
        for name, layer in chosen:
            before += layer_bytes(layer, seen_before)
            q = to_linear4bit(
                layer,
                quant_type=self.quant_type,
                double_quant=self.double_quant,
                compute_dtype=COMPUTE_DTYPES[self.compute_dtype],
                device=self.device,
            )
            replace(student, name, q)
            after += layer_bytes(q, seen_after)
        if skipped:
            log.warning(
                "quant=qlora: kept in full precision (features not multiples of %d): %s", MULTIPLE, listing(skipped)
            )
        log.info(
            "quant=qlora: %d linear layers -> %s (double_quant=%s, compute %s): base weights %.2f MB -> %.2f MB",
            len(chosen),
            self.quant_type,
            self.double_quant,
            self.compute_dtype,
            before / 1e6,
            after / 1e6,
        )
        self._report = {
            "layers_quantized": len(chosen),
            "layers_skipped": skipped,
            "base_bytes_before": before,
            "base_bytes_after": after,
        }

    def finalize(self, student: nn.Module) -> nn.Module:
        """Dequantize the base to fp32 and merge the adapters: a plain HF model (in place)."""
        if isinstance(student, PeftModel) and self.export == "adapters":
            self._adapters = adapter_snapshot(student)
        dequantize(student)
        return merge_lora(student)

    def export_extra(self, student: nn.Module, out_dir: Path) -> dict:
        """With ``export="adapters"``: the PEFT adapters alone in ``out_dir/adapters`` -- from the
        PEFT model itself when called before ``finalize``, else from the copy finalize kept."""
        if self.export != "adapters":
            return {}
        target = Path(out_dir) / "adapters"
        if isinstance(student, PeftModel):
            student.save_pretrained(str(target))
        elif self._adapters is not None:
            write_adapters(*self._adapters, target)
        else:
            raise DistillError("quant=qlora export=adapters: no LoRA adapters to export (finalize saw none)")
        return {
            "quant.adapters_dir": target.name,  # relative to the run dir: the run dir can move
            "quant.adapters_bytes": sum(f.stat().st_size for f in target.iterdir() if f.is_file()),
        }

    def report(self) -> dict:
        return {
            "quant": self.name,
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "compute_dtype": self.compute_dtype,
            **self._report,
        }


def dequantize(model: nn.Module) -> int:
    """Replace every 4-bit linear of ``model`` by its fp32 dequantized equivalent; returns how many."""
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    for name, layer in named:
        replace(model, name, to_linear(layer))
    return len(named)


def adapter_snapshot(model: PeftModel) -> tuple[dict, object]:
    """A copy of the active adapter's weights and config, as ``save_pretrained`` would write them."""
    name = model.active_adapter
    state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
    return state, copy.deepcopy(model.peft_config[name])


def write_adapters(state: dict, config, out_dir: Path) -> None:
    """What ``PeftModel.save_pretrained`` writes for one adapter: its weights and config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(out_dir / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    config = copy.deepcopy(config)
    config.inference_mode = True
    config.save_pretrained(str(out_dir))
