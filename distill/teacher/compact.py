"""The compact teacher-cache format (``teacher.cache_format=compact``): the top-k in about 100 bytes
per token at k = 64 and a 4,096-token vocabulary, where the float16 format takes 256.

Every token is two fixed-size byte records, so a shard stays a memory-mappable ``uint8`` array
``[rows, seq_len, bytes]`` read by row index, and a batch is decoded with whole-array numpy
operations (no Python loop over tokens). The entries are stored in ascending token-id order;
the best-first order the readers rely on is restored from the values.

Index record: the k ids, sorted, as an Elias-Fano code (fixed size for a given k and vocabulary;
never more than ~2 + log2(vocab / k) bits per id, where ceil(log2 vocab) bit packing would take 12
at vocab 4,096 and leave no room for the values). With ``l = floor(log2(vocab / k))`` low bits:

- ``ceil(k * l / 8)`` bytes: the low ``l`` bits of each id, most significant bit first, the ids'
  bit strings concatenated (``np.packbits`` order);
- ``ceil((k + ((vocab - 1) >> l) + 1) / 8)`` bytes: a bit vector in which bit ``(id_i >> l) + i`` is
  set for the i-th smallest id (i = 0 .. k-1), again ``np.packbits`` order.

Value record, ``3 + ceil(k / 2)`` bytes:

- bytes 0-1: ``log`` of the top-k's total probability (``log(1 - tail)``), float16 little-endian. The
  tail mass the training loss reads (``1 - sum exp(values)``, distill/losses/divergences.py) comes out
  exact to float16, so the "everything else" bucket is not disturbed by the quantization below;
- byte 2: a scale ``s`` in units of ``SCALE_STEP`` nats (1 .. 255): how far below the top the k-th
  value lies, rounded up (capped at 31.875 nats: an entry further down holds < 1e-13 of the top's mass);
- then k 4-bit codes, two per byte (the first in the high nibble), in the ids' ascending order: code c
  says the value lies ``c / 15 * s`` below the token's top value (the top itself has code 0).

Decoding puts each value at ``-c / 15 * s`` and shifts the token's k values so that they sum to the
stored top-k mass; the values are then sorted best first (equal codes in ascending id order).

Why these choices (measured on the quickstart teacher's validation rows, k = 64, vocab 4,096, with
``benchmarks/cache_format.py``'s KL to the full teacher distribution): against the float16 format's
KL, a uniform grid over ``[0, s]`` gave 1.006x, grids finer near the top (``x**1.5``, ``x**2``,
``expm1``) 1.007-1.019x, a fixed scale instead of ``s`` 1.017-1.03x, and anchoring on the top value
instead of the top-k mass 1.02-1.04x (the rounding errors then land in the tail bucket). 4-bit codes
are what fits: 35 + 64 = 99 bytes per token.
"""

from __future__ import annotations

import numpy as np

VALUE_BITS = 4
LEVELS = (1 << VALUE_BITS) - 1  # codes 0 .. 15
SCALE_STEP = 0.125  # nats per unit of the scale byte
_HEAD = 3  # float16 log top-k mass + the scale byte
# encoding rounds to the nearest level: the midpoints between levels, as fractions of the scale
_MIDPOINTS = (np.arange(LEVELS, dtype=np.float32) + 0.5) / LEVELS


def low_bits(top_k: int, vocab_size: int) -> int:
    """Elias-Fano's low-bit width: ``floor(log2(vocab / k))``, at least 0."""
    return max(0, (vocab_size // top_k).bit_length() - 1)


def _index_parts(top_k: int, vocab_size: int) -> tuple[int, int, int]:
    """(low bits per id, bytes of the low part, bits of the high bit vector)."""
    low = low_bits(top_k, vocab_size)
    if low > 25:  # the decoder reads each id's low bits from one 4-byte window
        raise ValueError(f"the compact format needs vocab / k < 2**26 (vocab {vocab_size}, k {top_k})")
    return low, -(-top_k * low // 8), top_k + ((vocab_size - 1) >> low) + 1


def record_bytes(top_k: int, vocab_size: int) -> tuple[int, int]:
    """Bytes per token of the (value, index) records."""
    _, low_bytes, high_bits = _index_parts(top_k, vocab_size)
    return _HEAD + -(-top_k * VALUE_BITS // 8), low_bytes + -(-high_bits // 8)


def layout(top_k: int, vocab_size: int) -> dict:
    """What the manifest records of the format (for a reader of the files; the version pins it)."""
    value_bytes, index_bytes = record_bytes(top_k, vocab_size)
    return {
        "value_bits": VALUE_BITS,
        "scale_step": SCALE_STEP,
        "low_bits": low_bits(top_k, vocab_size),
        "value_bytes": value_bytes,
        "index_bytes": index_bytes,
    }


def encode(values: np.ndarray, indices: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (log-probabilities, float32 preferred) and ``indices`` ``[..., k]``, best first, distinct
    ids per token -> the ``uint8`` value and index records ``[..., value_bytes]``, ``[..., index_bytes]``."""
    values, indices = np.asarray(values, np.float32), np.asarray(indices)
    lead, k = values.shape[:-1], values.shape[-1]
    values, indices = values.reshape(-1, k), indices.reshape(-1, k).astype(np.int64)
    order = np.argsort(indices, axis=-1, kind="stable")
    ids, lp = np.take_along_axis(indices, order, -1), np.take_along_axis(values, order, -1)
    if ids.size and (ids[:, 0].min() < 0 or ids[:, -1].max() >= vocab_size or (np.diff(ids, axis=-1) == 0).any()):
        raise ValueError(f"token ids must be distinct per token and in [0, {vocab_size})")
    lp = np.nan_to_num(lp, nan=-np.inf, posinf=0.0)
    top = lp.max(-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        log_mass = np.log(np.exp(lp - top).sum(-1, keepdims=True, dtype=np.float64)) + top
        below = np.nan_to_num(top - lp, nan=np.inf)  # a -inf value is infinitely far below
        scale = np.clip(np.ceil(below.max(-1, keepdims=True) / SCALE_STEP), 1, 255)
        codes = np.searchsorted(_MIDPOINTS, np.minimum(below / (scale * SCALE_STEP), 1.0)).astype(np.uint8)
    if k % 2:
        codes = np.concatenate([codes, np.zeros((len(codes), 1), np.uint8)], -1)
    head = np.minimum(log_mass, 0.0).astype("<f2").view(np.uint8)  # [n, 2]
    value_rec = np.concatenate([head, scale.astype(np.uint8), (codes[:, 0::2] << 4) | codes[:, 1::2]], -1)
    index_rec = _encode_ids(ids, k, vocab_size)
    return value_rec.reshape(*lead, value_rec.shape[-1]), index_rec.reshape(*lead, index_rec.shape[-1])


def _encode_ids(ids: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    low, _, high_bits = _index_parts(k, vocab_size)
    n = len(ids)
    shifts = np.arange(low - 1, -1, -1, dtype=np.int64)
    low_part = np.packbits(((ids[..., None] >> shifts) & 1).astype(np.uint8).reshape(n, k * low), axis=-1)
    high = np.zeros((n, high_bits), np.uint8)
    np.put_along_axis(high, (ids >> low) + np.arange(k), 1, axis=-1)
    return np.concatenate([low_part, np.packbits(high, axis=-1)], -1)


def decode(
    value_rec: np.ndarray, index_rec: np.ndarray, top_k: int, vocab_size: int, id_dtype=np.int64
) -> tuple[np.ndarray, np.ndarray]:
    """The records ``[..., value_bytes]``, ``[..., index_bytes]`` -> (float32 log-probabilities, ids of
    ``id_dtype``), both ``[..., k]`` and best first."""
    lead = value_rec.shape[:-1]
    value_rec, index_rec = value_rec.reshape(-1, value_rec.shape[-1]), index_rec.reshape(-1, index_rec.shape[-1])
    if (value_rec.shape[-1], index_rec.shape[-1]) != record_bytes(top_k, vocab_size):
        raise ValueError(
            f"records of {value_rec.shape[-1]} + {index_rec.shape[-1]} bytes, expected "
            f"{record_bytes(top_k, vocab_size)} for k={top_k}, vocab {vocab_size}"
        )
    n = len(value_rec)
    packed = value_rec[:, _HEAD:]
    codes = np.empty((n, 2 * packed.shape[-1]), np.uint8)
    codes[:, 0::2], codes[:, 1::2] = packed >> 4, packed & 15
    codes = codes[:, :top_k]
    log_mass = np.ascontiguousarray(value_rec[:, :2]).view("<f2").astype(np.float32)
    step = value_rec[:, 2:3].astype(np.float32) * np.float32(SCALE_STEP / LEVELS)
    below = codes * step  # the top has code 0, so the largest of -below is 0: no overflow in exp
    lp = (log_mass - np.log(np.exp(-below).sum(-1, keepdims=True))) - below
    # best first, equal codes in the ids' order; one flat gather (faster than take_along_axis)
    order = np.argsort(codes, axis=-1, kind="stable")
    order += np.arange(0, n * top_k, top_k)[:, None]
    ids = _decode_ids(index_rec, top_k, vocab_size).astype(id_dtype, copy=False)
    return lp.ravel()[order].reshape(*lead, top_k), ids.ravel()[order].reshape(*lead, top_k)


def _decode_ids(index_rec: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """Ascending ids ``[n, k]`` (uint32) of the Elias-Fano records."""
    low, low_bytes, high_bits = _index_parts(k, vocab_size)
    n = len(index_rec)
    high = np.unpackbits(index_rec[:, low_bytes:], axis=-1, count=high_bits)
    set_bits = np.flatnonzero(high.view(bool))  # row by row, each row's bits in order
    if set_bits.size != n * k:
        raise ValueError(f"a damaged index record: {set_bits.size} ids where {n * k} were stored")
    ids = set_bits.reshape(n, k).astype(np.uint32)
    ids -= (np.arange(n, dtype=np.uint32) * high_bits)[:, None] + np.arange(k, dtype=np.uint32)
    ids <<= low
    if low:  # each id's low bits lie within the 4 bytes from the byte they start in (low <= 25)
        start = np.arange(k) * low
        window = np.pad(index_rec[:, :low_bytes], ((0, 0), (0, 3)))
        word = np.take(window, start[:, None] // 8 + np.arange(4), axis=1).view(">u4")[..., 0]
        ids |= (word >> (32 - low - start % 8).astype(np.uint32)) & np.uint32((1 << low) - 1)
    return ids
