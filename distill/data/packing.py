"""Tokenize documents and pack them into fixed-length blocks.

Documents are joined with EOS and cut into blocks of ``seq_len + 1`` tokens, so a
block gives ``seq_len`` inputs and their next-token targets with no padding waste.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase


def tokenize(texts: list[str], tokenizer: PreTrainedTokenizerBase, batch_size: int = 256) -> np.ndarray:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        for doc in batch:
            ids.extend(doc)
            ids.append(eos)
    return np.asarray(ids, dtype=token_dtype(tokenizer))


def token_dtype(tokenizer: PreTrainedTokenizerBase) -> type:
    return np.int32 if len(tokenizer) < 2**31 else np.int64


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a token stream into ``[n_blocks, seq_len + 1]``; the ragged tail is dropped."""
    block = seq_len + 1
    n = len(tokens) // block
    return tokens[: n * block].reshape(n, block)


def pack_to_npy(
    texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, seq_len: int, path: Path, batch_size: int = 256
) -> int:
    """``pack(tokenize(texts))`` written to ``path`` (.npy) without holding the corpus or its tokens:
    documents are tokenized a batch at a time, whole blocks appended to a raw file, which is then
    copied into the .npy in chunks (loaded later with ``mmap_mode="r"``). Returns the block count."""
    block = seq_len + 1
    dtype = token_dtype(tokenizer)
    raw = path.with_suffix(".raw")
    carry = np.zeros(0, dtype=dtype)
    n_blocks = 0
    with open(raw, "wb") as f:
        for batch in _batches(texts, batch_size):
            carry = np.concatenate([carry, tokenize(batch, tokenizer, batch_size)])
            whole = len(carry) // block * block
            f.write(carry[:whole].tobytes())
            n_blocks += whole // block
            carry = carry[whole:]
    source = np.memmap(raw, dtype=dtype, mode="r", shape=(n_blocks, block)) if n_blocks else np.zeros((0, block), dtype)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_blocks, block))
    for start in range(0, n_blocks, 65536):
        out[start : start + 65536] = source[start : start + 65536]
    out.flush()
    del out, source
    raw.unlink()
    return n_blocks


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
