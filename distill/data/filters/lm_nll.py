"""Mean negative log-likelihood of texts under a causal LM, batched by length: what the model-based
filters score documents with.

Hand-written: evaluate's perplexity metric pads every text to the longest of the whole list, and
lm-eval is a harness to run, not a function to call inside a datatrove step. Here texts are sorted by
length into batches, padded positions never reach the loss, and the loss is taken one sequence at a
time on a view of the logits, so no second vocabulary-sized tensor the size of the batch is ever made
(a 128k-vocabulary teacher's logits are already the largest tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from distill.errors import DistillError

# A byte-level token covers at least one byte; cutting the text at this many characters per allowed
# token before tokenizing changes nothing in practice and keeps a 10 MB document from being
# tokenized whole only to keep its first 512 tokens.
CHARS_PER_TOKEN_CAP = 64


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, starting with BOS (or EOS, the document separator the teacher was
    trained with) so that the first real token is predicted too; at most ``max_tokens`` ids."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    cut = [t[: max_tokens * CHARS_PER_TOKEN_CAP] for t in texts]
    ids = tokenizer(cut, add_special_tokens=True)["input_ids"]
    if start is not None:
        ids = [s if s[:1] == [start] else [start, *s] for s in ids]
    return [s[:max_tokens] for s in ids]


def collate(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: real tokens keep positions 0..n-1 and, being causal,
    never attend to the padding after them, so their logits equal the unpadded ones."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def length_batches(seqs: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``seqs`` grouped into batches of similar length, longest first (an out-of-memory
    batch then fails at once, not at the end of a shard)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def batch_nll(model, ids: torch.Tensor, mask: torch.Tensor, bf16: bool = False) -> list[float]:
    """Mean next-token NLL of each right-padded row (NaN for a row with fewer than two tokens)."""
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    out = []
    for row, n in enumerate(mask.sum(1).tolist()):
        if n < 2:
            out.append(float("nan"))
            continue
        # A contiguous view of this row's real positions: the padded ones are never touched.
        loss = F.cross_entropy(logits[row, : n - 1].float(), ids[row, 1:n])
        out.append(loss.item())
    return out


def score_ids(model, seqs: list[list[int]], batch_size: int = 8, bf16: bool = False) -> list[float]:
    """Mean NLL of already-encoded sequences, in input order."""
    scores = [float("nan")] * len(seqs)
    for batch in length_batches(seqs, batch_size):
        ids, mask = collate([seqs[i] for i in batch])
        for i, s in zip(batch, batch_nll(model, ids, mask, bf16)):
            scores[i] = s
    return scores


def score_texts(
    model,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 8,
    max_tokens: int = 512,
    device: str = "cpu",
    bf16: bool = False,
) -> list[float]:
    """Mean per-token negative log-likelihood (nats; ``exp`` of it is the perplexity) of each text
    under a causal LM in eval mode, on its first ``max_tokens`` tokens. NaN for an empty text."""
    if batch_size < 1 or max_tokens < 2:
        raise DistillError(f"need batch_size >= 1 and max_tokens >= 2, got {batch_size} and {max_tokens}")
    model.to(device)
    # Learned position tables (GPT-2) end at the context length; rotary models degrade past it.
    max_tokens = min(max_tokens, getattr(model.config, "max_position_embeddings", None) or max_tokens)
    return score_ids(model, encode(tokenizer, texts, max_tokens), batch_size, bf16)


# --- the scoring pass ---------------------------------------------------------------------------
