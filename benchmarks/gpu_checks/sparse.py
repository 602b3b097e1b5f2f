"""2:4 sparsity with PyTorch's semi-structured sparse kernels against dense: the matmuls of one student
layer (its seven linears at the KD step's token count) and greedy generation of a 2:4 student whose
decoder linears hold semi-structured weights.

Masks come from the project's code (``distill.student.sparsity``: magnitude scores, pattern "2:4"), so
what is timed is what ``student=sparsity`` produces. The kernels (``torch.sparse.to_sparse_semi_structured``)
exist on CUDA sm80+ only: cuSPARSELt where torch ships it, else CUTLASS. On the CPU the check still builds
the masks, checks the pattern and measures dense generation of the masked student, then says why it
stops."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import STUDENT, Context, Skip, build, median_seconds, ratio

PATTERN = "2:4"


def layer_shapes(config) -> dict[str, tuple[int, int]]:
    """(out, in) of the linears of one decoder layer of a Llama-style model."""
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    hidden, inter = config.hidden_size, config.intermediate_size
    return {
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv * head_dim, hidden),
        "v_proj": (kv * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }


def masked_weights(ctx: Context, config) -> dict[str, torch.Tensor]:
    """Random bf16 weights of the layer's shapes, 2:4-masked by magnitude (the project's mask code)."""
    from distill.student.sparsity import mask_from_scores, parse_sparsity

    pattern, g = parse_sparsity(PATTERN), torch.Generator().manual_seed(0)
    out = {}
    for name, (rows, cols) in layer_shapes(config).items():
        w = torch.randn(rows, cols, generator=g) / cols**0.5
        keep = mask_from_scores(w.abs(), pattern)
        if int(keep.reshape(rows, cols // 4, 4).sum(-1).max()) > 2:
            raise RuntimeError(f"{name}: the mask keeps more than 2 of 4")
        out[name] = (w * keep).to(device=ctx.device, dtype=torch.bfloat16)
    return out


def semi_structured_backend(ctx: Context, found: dict) -> str:
    """The backend whose kernel runs here (cuSPARSELt first, then CUTLASS); Skip with the reasons else.
    Leaves ``SparseSemiStructuredTensor._FORCE_CUTLASS`` set for that backend."""
    if not ctx.cuda:
        raise Skip("semi-structured sparse kernels need CUDA (sm80+)", **found)
    if torch.cuda.get_device_capability(ctx.device) < (8, 0):
        raise Skip(f"semi-structured sparse kernels need sm80+, this is {torch.cuda.get_device_name()}", **found)
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    probe = torch.tensor([0, 0, 1, 1], dtype=torch.bfloat16, device=ctx.device).tile((128, 32))
    x = torch.randn(64, 128, dtype=torch.bfloat16, device=ctx.device)
    errors = []
    for backend, force in (("cuSPARSELt", False), ("CUTLASS", True)):
        SparseSemiStructuredTensor._FORCE_CUTLASS = force
        try:
            F.linear(x, to_sparse_semi_structured(probe))
            torch.cuda.synchronize()
            return backend
        except (RuntimeError, NotImplementedError, ValueError, AssertionError, TypeError) as e:
            errors.append(f"{backend}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise Skip("no semi-structured sparse kernel ran here: " + "; ".join(errors), **found)


def matmuls(ctx: Context, weights: dict[str, torch.Tensor], tokens: int) -> dict:
    """Dense ``F.linear`` against the semi-structured weight, per linear and over the whole layer."""
    from torch.sparse import to_sparse_semi_structured

    out, dense_total, sparse_total, worst = {}, 0.0, 0.0, 0.0
    for name, w in weights.items():
        x = torch.randn(tokens, w.shape[1], dtype=w.dtype, device=w.device)
        sparse = to_sparse_semi_structured(w)
        dense_s = median_seconds(ctx, partial(F.linear, x, w), warmup=3, steps=10)
        sparse_s = median_seconds(ctx, partial(F.linear, x, sparse), warmup=3, steps=10)
        reference = F.linear(x, w).float()
        err = float((F.linear(x, sparse).float() - reference).abs().max() / reference.abs().max())
        out[f"{name}_speedup"] = dense_s / sparse_s
        dense_total, sparse_total, worst = dense_total + dense_s, sparse_total + sparse_s, max(worst, err)
    out.update(layer_dense_s=dense_total, layer_sparse_s=sparse_total, matmul_speedup=dense_total / sparse_total)
    out["matmul_max_rel_err"] = worst
    return out


def sparse_model(ctx: Context):
    """The 2:4 student of ``student=sparsity`` (magnitude scores, so no calibration data), masks baked."""
    from distill.student.sparsity import bake_masks, sparse_student, verify_sparsity

    dense = build(ctx, STUDENT, torch.bfloat16).eval()
    model = sparse_student(dense, method="magnitude", sparsity=PATTERN, device=str(ctx.device))
    del dense
    bake_masks(model)
    return model.eval(), verify_sparsity(model, PATTERN)["overall"]


def generation_speed(ctx: Context, model, prompts: torch.Tensor, new_tokens: int) -> float:
    """Greedy tokens/s (batch × new tokens), exactly ``new_tokens`` each (random weights may emit EOS)."""

    @torch.no_grad()
    def generate():
        return model.generate(
            prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )

    seconds = median_seconds(ctx, generate, warmup=1, steps=2)
    return prompts.shape[0] * new_tokens / seconds


def to_semi_structured(model) -> int:
    """Swap every decoder-block linear's weight for its semi-structured form (the LM head stays dense)."""
    from torch.sparse import to_sparse_semi_structured

    from distill.student.sparsity import target_linears

    layers = target_linears(model)
    for _, module in layers:
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach().contiguous()), False)
    return len(layers)


def sparse_2_4(ctx: Context) -> dict:
    config = ctx.config(STUDENT)
    weights = masked_weights(ctx, config)
    model, overall = sparse_model(ctx)
    batch, prompt_len, new_tokens = (2, 8, 4) if ctx.dry else (8, 128, 64)
    prompts = torch.randint(0, config.vocab_size, (batch, prompt_len), device=ctx.device)
    dense_tps = generation_speed(ctx, model, prompts, new_tokens)
    found = {"pattern": PATTERN, "masked_layers": len(weights), "student_zero_fraction": overall}
    found["dense_generate_tokens_per_s"] = dense_tps
    from torch.sparse import SparseSemiStructuredTensor

    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    try:
        backend = semi_structured_backend(ctx, found)
        tokens = 4 * ctx.seq_len  # the KD step's rows of the student
        out = {**found, "backend": backend, "matmul_tokens": tokens, **matmuls(ctx, weights, tokens)}
        with torch.no_grad():
            reference = model(input_ids=prompts, use_cache=False).logits.float()
        out["swapped_linears"] = to_semi_structured(model)
        with torch.no_grad():
            logits = model(input_ids=prompts, use_cache=False).logits.float()
        out["logits_max_rel_err"] = float((logits - reference).abs().max() / reference.abs().max())
        out["sparse_generate_tokens_per_s"] = generation_speed(ctx, model, prompts, new_tokens)
        out["generate_speedup"] = ratio(out["sparse_generate_tokens_per_s"], dense_tps)
        out.update(generate_batch=batch, prompt_len=prompt_len, new_tokens=new_tokens)
        return out
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced
