"""Greedy generation speed and size on disk: a bf16 student vs its torchao-quantized forms, on CPU.

Forms: bf16 (plain HF), int8-int4 and int8-int2 (torchao ``Int8DynamicActivationIntxWeightConfig``
through ``distill.quant.ptq.ptq_rtn``, the scheme QAT converts to). ``model.generate`` with a
fixed prompt, greedy, a fixed number of new tokens; a warm-up call per form, then interleaved
rounds, medians reported, with the ratio to bf16. Sizes: the HF bf16 export, torchao's own
serialization (``TorchAoConfig`` + ``save_pretrained``: int4 stored unpacked, one byte per value)
and our packed checkpoint (``distill.quant.export.save_packed``).

    python benchmarks/quant_generation.py                      # hidden 256, 4 layers, vocab 4096
    python benchmarks/quant_generation.py --rounds 1 --new-tokens 16   # quick check
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distill.quant.export import dir_size_bytes, load_packed, save_packed
from distill.quant.ptq import ptq_rtn
from distill.student.scratch import build_llama

FORMS = {"int8-int4": 4, "int8-int2": 2}


def tokens_per_s(model, prompt: torch.Tensor, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    elapsed = time.perf_counter() - start
    assert out.shape[1] - prompt.shape[1] == new_tokens
    return prompt.shape[0] * new_tokens / elapsed


def speed(models: dict, prompt, new_tokens: int, rounds: int) -> dict[str, float]:
    for model in models.values():  # warm-up: first-call allocations, lazy init
        tokens_per_s(model, prompt, 4)
    runs = {name: [] for name in models}
    for _ in range(rounds):  # interleaved, so drifts in machine load hit every form alike
        for name, model in models.items():
            runs[name].append(tokens_per_s(model, prompt, new_tokens))
    return {name: statistics.median(r) for name, r in runs.items()}


def torchao_size(bf16_dir: Path, out: Path) -> int | None:
    """torchao's own checkpoint of the int8-int4 model (None if this transformers can't write it)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup
    from transformers import AutoModelForCausalLM, TorchAoConfig

    config = TorchAoConfig(
        Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(bf16_dir, quantization_config=config, dtype=torch.bfloat16)
        model.save_pretrained(out)
    except Exception as e:  # report, don't hide
        print(f"torchao save_pretrained failed: {type(e).__name__}: {e}")
        return None
    return dir_size_bytes(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    torch.manual_seed(0)
    student = build_llama(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=max(1, args.hidden // 64),
        eos_token_id=None,
    ).eval()
    student = student.to(torch.bfloat16)
    quantized = {name: ptq_rtn(student, bits, 32, "int8") for name, bits in FORMS.items()}
    models = {"bf16": student, **quantized}
    prompt = torch.randint(1, args.vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; {torch.get_num_threads()} threads; "
        f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, {args.rounds} rounds"
    )

    result = speed(models, prompt, args.new_tokens, args.rounds)
    print(f"{'form':10} {'tokens/s':>10} {'vs bf16':>8}")
    for name, tps in result.items():
        print(f"{name:10} {tps:10.1f} {tps / result['bf16']:8.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models["bf16"].save_pretrained(tmp / "bf16")
        sizes = {"HF bf16 (save_pretrained)": dir_size_bytes(tmp / "bf16")}
        ao = torchao_size(tmp / "bf16", tmp / "torchao")
        if ao is not None:
            sizes["torchao int8-int4 (TorchAoConfig save)"] = ao
        for name, bits in FORMS.items():
            save_packed(quantized[name], tmp / name, bits, 32)
            sizes[f"packed {name} (save_packed)"] = dir_size_bytes(tmp / name)
            loaded = load_packed(tmp / name, dtype=torch.bfloat16)  # int x scale, rounded to bf16 as torchao does
            ref = quantized[name].model.layers[0].mlp.up_proj.weight.dequantize()
            assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight, ref)  # round trip exact
        print(f"{'checkpoint':40} {'bytes':>10} {'vs bf16':>8}")
        base = sizes["HF bf16 (save_pretrained)"]
        for name, size in sizes.items():
            print(f"{name:40} {size:10d} {size / base:8.3f}")


if __name__ == "__main__":
    main()
