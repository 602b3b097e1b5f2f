"""Encoded conversations as training rows: one per row, or several packed into a row.

A row holds ``seq_len + 1`` tokens; its targets ``[seq_len]`` are the next token where the loss
trains on it, else -100. Conversations longer than a row (``seq_len + 1`` tokens) are cut to the
row: kept (counted ``truncated``) when a target token survives the cut, else skipped (counted
``overlong_no_target``): a prompt that fills the row leaves nothing to learn.

Packing (``data.packing=true``): conversations are placed whole into rows, first-fit in order of
decreasing length (fewer padding tokens than placing them in order), each with position ids that
restart at 0. transformers reads restarting position ids as separate sequences and masks
attention between them (``masking_utils.find_packed_sequence_indices``, the padding-free packing
of TRL), so a packed conversation sees exactly what it would see alone. A target is never the
first token of the next conversation.
"""

from __future__ import annotations

import numpy as np

from distill.data.chat.render import Encoded

IGNORE_INDEX = -100


def _cut(encoded: list[Encoded], width: int, stats: dict) -> list[Encoded]:
    """Each conversation cut to ``width`` tokens; those left without a target are dropped."""
    kept = []
    for e in encoded:
        if len(e.ids) > width:
            if not e.mask[1:width].any():
                stats["overlong_no_target"] += 1
                continue
            stats["truncated"] += 1
            e = Encoded(e.ids[:width], e.mask[:width], min(e.prompt_len, width - 1))
        kept.append(e)
    return kept


def _stats(n: int) -> dict:
    return {"conversations": n, "kept": 0, "truncated": 0, "overlong_no_target": 0, "rows": 0, "target_tokens": 0}


def single_rows(encoded: list[Encoded], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """One conversation per row, right-padded: rows ``[n, seq_len + 1]``, targets ``[n, seq_len]``,
    and each row's prompt length (the tokens before its last target turn)."""
    width, stats = seq_len + 1, _stats(len(encoded))
    kept = _cut(encoded, width, stats)
    rows = np.full((len(kept), width), pad_id, dtype=np.int64)
    targets = np.full((len(kept), seq_len), IGNORE_INDEX, dtype=np.int64)
    for r, e in enumerate(kept):
        n = len(e.ids)
        rows[r, :n] = e.ids
        targets[r, : n - 1] = np.where(e.mask[1:n], e.ids[1:n], IGNORE_INDEX)
    stats.update(kept=len(kept), rows=len(kept), target_tokens=int((targets != IGNORE_INDEX).sum()))
    return rows, targets, np.asarray([e.prompt_len for e in kept], dtype=np.int64), stats


def first_fit(lengths: list[int], width: int) -> list[list[int]]:
    """Indices grouped into bins of at most ``width`` tokens: first-fit, longest first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(width - lengths[i])
    return bins


def packed_rows(encoded: list[Encoded], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Several conversations per row: rows ``[n, seq_len + 1]``, targets ``[n, seq_len]`` and
    position ids ``[n, seq_len + 1]`` that restart at 0 for each conversation (and the padding)."""
    width, stats = seq_len + 1, _stats(len(encoded))
    kept = _cut(encoded, width, stats)
    bins = first_fit([len(e.ids) for e in kept], width)
    rows = np.full((len(bins), width), pad_id, dtype=np.int64)
    targets = np.full((len(bins), seq_len), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((len(bins), width), dtype=np.int64)
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            e, n = kept[i], len(kept[i].ids)
            rows[r, at : at + n] = e.ids
            positions[r, at : at + n] = np.arange(n)
            # targets[j] predicts token j + 1: only inside this conversation
            targets[r, at : at + n - 1] = np.where(e.mask[1:n], e.ids[1:n], IGNORE_INDEX)
            at += n
        positions[r, at:] = np.arange(width - at)  # the padding is one more (never attended to) sequence
    stats.update(kept=len(kept), rows=len(bins), target_tokens=int((targets != IGNORE_INDEX).sum()))
    return rows, targets, positions, stats
