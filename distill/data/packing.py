"""Tokenize documents and pack them into fixed-length blocks.

Documents are joined with EOS and cut into blocks of ``seq_len + 1`` tokens, so a
block gives ``seq_len`` inputs and their next-token targets with no padding waste.
"""

from __future__ import annotations

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
    dtype = np.int32 if len(tokenizer) < 2**31 else np.int64
    return np.asarray(ids, dtype=dtype)


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a token stream into ``[n_blocks, seq_len + 1]``; the ragged tail is dropped."""
    block = seq_len + 1
    n = len(tokens) // block
    return tokens[: n * block].reshape(n, block)
