"""The batch-sized parts of the memory model (``distill.quant.memory``): activations and loss buffers.

Activations saved for backward in a decoder LM with fused (SDPA) attention, so no heads × seq² score
matrix: per layer batch × seq × (10·hidden + 4·intermediate) values (norm inputs, q/k/v before and after
rotary, attention output and its log-sum-exp, the SwiGLU gate/up/activation/product; an MoE student runs
``experts_per_token`` MLPs per token), at 4 bytes in fp32 and ~2.7 bytes under 16-bit autocast (the
residual stream and RMSNorm stay fp32), plus under autocast the 16-bit copies of the linear weights that
the matmuls save for their backward (the LM head's too). Measured on CPU Llamas with saved-tensor hooks:
fp32 21.0·hidden per token-layer at intermediate 2.75·hidden (the formula: 21.0), bf16-mixed 56 bytes
after its weight casts (formula: 56.7). Korthikanti et al. 2022 count 34·hidden bytes for a 4·hidden GELU
MLP at 16 bits with dropout masks. Eager attention (Gemma-2, attention-map losses) also saves the heads ×
seq scores per token: their softmax in fp32, its 16-bit cast, and soft-capping's tensors (measured fp32:
Llama eager 0.96 of the formula, Gemma-2 0.99).
A live teacher runs after the student's forward, under no_grad: one layer's worth of its activations is
alive on top of the student's (``teacher_workspace``).

Loss buffers: the student's logits (the head's output dtype: 16-bit under autocast), a copy when the
head has padding rows past the tokenizer (the loss reads a contiguous ``[tokens, vocab]``), the
gradient of the logits that the chunked loss writes in its forward (same size), a live teacher's logits,
a cached teacher's top-k (fp32 log-probs and int64 ids), the per-chunk fp32 work of the loss
(``CHUNK_BUFFERS`` × chunk × vocab) and, under autocast, the 16-bit gradient of the head's weight before it
is accumulated into the fp32 gradient. With ``loss.fused_linear`` no logits exist: only the chunks (the
teacher's chunk logits among them) and the gradient of the final hidden state.
"""

from __future__ import annotations

from torch import nn

from distill.losses.fused_linear import fused_chunk

ACT_BYTES = {"fp32": 4.0, "16": 2.7}  # bytes per saved activation value (see the module docstring)
CHUNK_BUFFERS = 4  # fp32 [chunk, vocab] tensors alive at once in a loss chunk: 3.3 measured (eager, vocab 32,768)


def model_dims(model: nn.Module) -> tuple[int, int, int]:
    """hidden, intermediate (MLP width; GPT-2's n_inner defaults to 4·hidden) and layers."""
    config = model.config
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    return hidden, inter, layers


def eager_attention(model: nn.Module) -> bool:
    """Whether attention runs eager (scores materialized): Gemma-2-style soft-capping or a config that asks."""
    impl = getattr(model.config, "_attn_implementation", None)
    return impl == "eager"


def head_rows(model: nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _linear_numel(model: nn.Module, with_head: bool) -> int:
    head = model.get_output_embeddings()
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and (with_head or module is not head) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def activation_bytes(student: nn.Module, teacher: nn.Module | None, setup) -> float:
    """Saved activations of the student's forward, its autocast weight casts, and a live teacher's
    forward workspace, per device (``setup``: a ``distill.quant.memory.Setup``)."""
    hidden, inter, layers = model_dims(student)
    tokens = setup.batch_size * setup.seq_len
    experts = getattr(student.config, "num_experts_per_tok", None) or 1
    act = ACT_BYTES["16" if setup.mixed else "fp32"]
    per_layer = (10 * hidden + 4 * inter * experts) * act
    if student.config.model_type in ("gemma2", "gemma3"):  # two more norms per block, around the MLP
        per_layer += 2 * hidden * act
    if eager_attention(student):  # per score: its fp32 softmax, its 16-bit cast, soft-capping's tanh and input
        softcap = 8 if getattr(student.config, "attn_logit_softcapping", None) else 0
        per_layer += student.config.num_attention_heads * setup.seq_len * (4 + softcap + (2 if setup.mixed else 0))
    saved = tokens * per_layer * layers
    casts = 0.0
    if setup.mixed and not str(setup.quant).lower().startswith("qlora"):  # QLoRA: bnb dequantizes per op
        casts = 2.0 * _linear_numel(student, with_head=not setup.fused_linear)
    return float(saved + casts + (teacher_workspace(teacher, setup) if teacher is not None else 0.0))


def teacher_workspace(teacher: nn.Module, setup) -> float:
    """One teacher layer's intermediate tensors (no_grad frees each layer's as the next one runs)."""
    hidden, inter, _ = model_dims(teacher)
    value = 2 if setup.mixed else 4
    return float(setup.batch_size * setup.seq_len * (4 * hidden + 3 * inter) * value)


def loss_bytes(student: nn.Module, teacher: nn.Module | None, setup) -> float:
    """The loss's logits-sized buffers per device (see the module docstring)."""
    tokens, vocab, hidden = setup.batch_size * setup.seq_len, setup.vocab_size, model_dims(student)[0]
    chunk_tokens = fused_chunk(setup.chunk_size, hidden) if setup.fused_linear else setup.chunk_size
    chunk = min(chunk_tokens, tokens) * vocab * 4 * CHUNK_BUFFERS
    if setup.fused_linear:
        t_hidden = model_dims(teacher)[0] if teacher is not None else 0
        return float(chunk + tokens * (hidden + t_hidden) * 4)
    logit = 2 if setup.mixed else 4
    rows = head_rows(student)
    total = tokens * rows * logit + tokens * vocab * logit * (2 if rows != vocab else 1)  # logits (+ copy), grad
    if setup.mixed:
        total += 2 * rows * hidden  # the head weight's 16-bit gradient before accumulation
    if teacher is not None:  # its logits come out in its head's dtype (bf16 when loaded so), or autocast's
        t_rows, t_logit = (
            head_rows(teacher),
            2 if setup.mixed else teacher.get_output_embeddings().weight.element_size(),
        )
        t_logit = 2 if str(setup.teacher_load_in).lower() in ("bf16", "fp16") else t_logit
        total += tokens * t_rows * t_logit + (tokens * vocab * t_logit if t_rows != vocab else 0)
    elif setup.teacher_kind == "cache":
        total += tokens * setup.top_k * (4 + 8)
    return float(total + chunk)
