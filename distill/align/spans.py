"""Spans where two tokenizations of one text agree on a boundary (the alignment of GOLD / MinED).

Each token covers a range of characters ``[start, end)``. A character position where a teacher
token and a student token both end is a *shared boundary*; the tokens between two consecutive
shared boundaries form a *span*: a group of teacher tokens and a group of student tokens that
cover the same characters. A span is the unit a cross-tokenizer loss compares: the teacher's
and the student's probability of the span's text, each merged from its own tokens by the chain
rule (the log-probability of the first token's distribution plus the log-probabilities of the
span's later tokens under teacher forcing; see ``distill.losses.cross_vocab``).

Everything here is numpy on offset arrays (no tokenizer, no torch): a span's tokens are found
by ``searchsorted`` over token ends, so aligning a row costs a few vectorised passes over its
tokens. Zero-width tokens (specials a post-processor adds, offsets ``(0, 0)``) cover no
characters: they belong to no span, but still serve as the row that predicts the next token.

A span is distilled only if both sides have a row that predicts its first token (not the row's
first token), it holds no special token on one side only (an EOS paired with ordinary text would
compare unrelated events), and neither side has more than ``max_span_tokens`` tokens (the merged
probability of a long span is a product of many factors: tiny, and with no gradient signal
worth its noise). What is not distilled is counted in ``AlignmentStats``, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

MAX_SPAN_TOKENS = 16  # a span longer than this on either side is counted and left out (see above)


@dataclass(frozen=True)
class AlignmentStats:
    """What one alignment (or a sum of them) distilled and what it left out, and why."""

    spans: int = 0  # distilled spans
    one_to_one: int = 0  # distilled spans with exactly one token on each side
    teacher_tokens: int = 0  # tokens that cover characters (zero-width specials aside)
    student_tokens: int = 0
    unaligned_teacher: int = 0  # covering tokens in no distilled span
    unaligned_student: int = 0
    no_context: int = 0  # spans left out: their first token starts the row (nothing predicts it)
    special: int = 0  # spans left out: a special token on one side only
    long: int = 0  # spans left out: more than max_span_tokens tokens on a side
    longest_stretch: int = 0  # characters of the longest stretch with no shared boundary

    def __add__(self, other: AlignmentStats) -> AlignmentStats:
        add = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        add["longest_stretch"] = max(self.longest_stretch, other.longest_stretch)
        return AlignmentStats(**add)

    def summary(self) -> str:
        """One line for a log or a report."""
        covered = 1 - self.unaligned_student / max(1, self.student_tokens)
        return (
            f"{self.spans} aligned spans ({self.one_to_one} one-to-one) over {self.student_tokens} student "
            f"and {self.teacher_tokens} teacher tokens ({covered:.0%} of the student tokens in a span); left out: "
            f"{self.no_context} without context, {self.special} special on one side, {self.long} longer than "
            f"the span limit; unaligned tokens: {self.unaligned_teacher} teacher, {self.unaligned_student} "
            f"student; longest stretch without a shared boundary: {self.longest_stretch} characters"
        )


@dataclass(frozen=True)
class Side:
    """One side's part of an alignment. Positions index the side's token sequence."""

    rows: np.ndarray  # [K] int64: the logits row (first token's position − 1) whose distribution is compared
    first_ids: np.ndarray  # [K] int64: each span's first token id (what that row should predict)
    extra_rows: np.ndarray  # [E] int64: rows predicting each span's later tokens (their log-probs are summed)
    extra_ids: np.ndarray  # [E] int64: those later tokens
    extra_span: np.ndarray  # [E] int64: the span each belongs to
    end_rows: np.ndarray  # [K] int64: each span's last token's position (the row predicting what follows the span)
    last_ids: np.ndarray  # [K] int64: each span's last token id
    row_ids: np.ndarray  # [K] int64: the token at each predicting row (the one before the span)


@dataclass(frozen=True)
class Alignment:
    """One row's alignment: K distilled spans, their teacher and student sides, and the counts."""

    teacher: Side
    student: Side
    one_to_one: np.ndarray  # [K] bool: a single token on each side (top-1 agreement counts these)
    stats: AlignmentStats

    def __len__(self) -> int:
        return len(self.one_to_one)


def covering_ends(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the tokens that cover characters, their end offsets made non-decreasing).

    Byte tokens of one character all carry that character's offsets, so ends repeat; a running
    maximum guards against normalizers that report an end before the previous one."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    covering = np.flatnonzero(offsets[:, 1] > offsets[:, 0])
    return covering, np.maximum.accumulate(offsets[covering, 1]) if len(covering) else np.zeros(0, np.int64)


def span_ids(ends: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """The span of each token: the index of the first shared boundary at or after its end
    (``len(boundaries)`` for tokens after the last one: unaligned)."""
    return np.searchsorted(boundaries, ends, side="left")


def first_positions(spans: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Index (into ``spans``, which is non-decreasing) of each span's first token, and tokens per span."""
    starts = np.searchsorted(spans, np.arange(count + 1), side="left")
    return starts[:-1], np.diff(starts)


def longest_stretch(boundaries: np.ndarray, text_start: int) -> int:
    """Characters between consecutive shared boundaries, at most."""
    if not len(boundaries):
        return 0
    return int(np.diff(np.concatenate([[text_start], boundaries])).max())


def align_offsets(
    teacher_ids: np.ndarray,
    teacher_offsets: np.ndarray,
    student_ids: np.ndarray,
    student_offsets: np.ndarray,
    *,
    teacher_special: np.ndarray | None = None,
    student_special: np.ndarray | None = None,
    max_span_tokens: int = MAX_SPAN_TOKENS,
) -> Alignment:
    """Align two tokenizations of one text by their character offsets ([n, 2] each).

    ``*_special``: [n] bool, the tokens that are special (EOS, BOS, ...). Returns the distilled
    spans (see the module doc for which are) and the counts of everything else."""
    t_pos, t_end = covering_ends(teacher_offsets)
    s_pos, s_end = covering_ends(student_offsets)
    boundaries = np.intersect1d(t_end, s_end)
    t_span, s_span = span_ids(t_end, boundaries), span_ids(s_end, boundaries)
    n = len(boundaries)
    t_first, t_count = first_positions(t_span, n)
    s_first, s_count = first_positions(s_span, n)
    t_special = _special(teacher_special, len(teacher_ids), t_pos, t_span, n)
    s_special = _special(student_special, len(student_ids), s_pos, s_span, n)
    # a row's first covering token is predicted by nothing when it is the row's first token
    no_context = (t_pos[t_first] == 0) | (s_pos[s_first] == 0) if n else np.zeros(0, bool)
    one_sided = t_special != s_special
    long = (t_count > max_span_tokens) | (s_count > max_span_tokens)
    keep = ~(no_context | one_sided | long)
    teacher = _side(np.asarray(teacher_ids), t_pos, t_span, t_first, keep)
    student = _side(np.asarray(student_ids), s_pos, s_span, s_first, keep)
    text_start = min(int(t_end[0]) if len(t_end) else 0, int(s_end[0]) if len(s_end) else 0)
    first_start = _first_start(teacher_offsets, student_offsets, t_pos, s_pos, text_start)
    stats = AlignmentStats(
        spans=int(keep.sum()),
        one_to_one=int((keep & (t_count == 1) & (s_count == 1)).sum()),
        teacher_tokens=len(t_pos),
        student_tokens=len(s_pos),
        unaligned_teacher=len(t_pos) - int(t_count[keep].sum()),
        unaligned_student=len(s_pos) - int(s_count[keep].sum()),
        no_context=int((no_context & ~(t_special & s_special)).sum()),  # a leading EOS is context, not text
        special=int((one_sided & ~no_context).sum()),
        long=int((long & ~no_context & ~one_sided).sum()),
        longest_stretch=max(longest_stretch(boundaries, first_start), _tail_stretch(t_end, s_end, boundaries)),
    )
    return Alignment(teacher, student, ((t_count == 1) & (s_count == 1))[keep], stats)


def _special(flags, length, pos, spans, count) -> np.ndarray:
    """[count] bool: the span holds a special token on this side."""
    if flags is None or not count:
        return np.zeros(count, bool)
    flags = np.asarray(flags, bool).reshape(length)[pos]
    inside = spans < count
    out = np.zeros(count, bool)
    out[spans[inside & flags]] = True
    return out


def _side(ids, pos, spans, first, keep) -> Side:
    """The kept spans' predicting rows and their later tokens, on one side."""
    kept = np.flatnonzero(keep)
    first_pos = pos[first[kept]]
    new_index = np.full(len(keep) + 1, -1, np.int64)  # old span id -> kept span id (−1: left out)
    new_index[kept] = np.arange(len(kept))
    later = np.ones(len(spans), bool)
    later[first] = False
    span_of = new_index[spans]
    extra = np.flatnonzero(later & (span_of >= 0))
    extra_pos = pos[extra]
    last_pos = pos[np.searchsorted(spans, kept, side="right") - 1]
    return Side(
        rows=first_pos - 1,
        first_ids=ids[first_pos].astype(np.int64),
        extra_rows=extra_pos - 1,
        extra_ids=ids[extra_pos].astype(np.int64),
        extra_span=span_of[extra],
        end_rows=last_pos,
        last_ids=ids[last_pos].astype(np.int64),
        row_ids=ids[first_pos - 1].astype(np.int64),
    )


def _first_start(t_offsets, s_offsets, t_pos, s_pos, fallback) -> int:
    """Where the text the two sides cover begins (the first stretch is measured from here)."""
    starts = [int(np.asarray(o).reshape(-1, 2)[p[0], 0]) for o, p in ((t_offsets, t_pos), (s_offsets, s_pos)) if len(p)]
    return min(starts) if starts else fallback


def _tail_stretch(t_end, s_end, boundaries) -> int:
    """Characters after the last shared boundary that one side covers (a ragged, unaligned end)."""
    last = int(boundaries[-1]) if len(boundaries) else 0
    ends = [int(e[-1]) for e in (t_end, s_end) if len(e)]
    return max(ends) - last if ends else 0
