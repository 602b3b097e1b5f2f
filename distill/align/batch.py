"""A batch of row alignments as flat index tensors, ready for a batched cross-tokenizer loss.

The loss reads the student's logits as ``[B·Ls, Vs]`` and the teacher's as ``[B·Lt, Vt]`` (rows
flattened), so each row's positions are offset by ``b·L``; spans are numbered across the batch.
Built once per batch on the CPU (numpy concatenation) and moved to the device with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from distill.align.spans import Alignment, Side


@dataclass(frozen=True)
class SideIndex:
    """One model's indices into its flattened logits rows (see ``distill.align.spans.Side``)."""

    rows: Tensor  # [K] long
    first_ids: Tensor  # [K] long
    extra_rows: Tensor  # [E] long
    extra_ids: Tensor  # [E] long
    extra_span: Tensor  # [E] long
    end_rows: Tensor  # [K] long
    last_ids: Tensor  # [K] long
    row_ids: Tensor  # [K] long

    def to(self, device) -> SideIndex:
        return SideIndex(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass(frozen=True)
class AlignedBatch:
    """K spans across the batch: where each side's distribution is read, what is merged into it,
    and a weight per span (0 = not distilled, e.g. a prompt token under a response-only mask)."""

    teacher: SideIndex
    student: SideIndex
    weight: Tensor  # [K] float32
    one_to_one: Tensor  # [K] bool

    def __len__(self) -> int:
        return len(self.weight)

    def to(self, device) -> AlignedBatch:
        return AlignedBatch(
            self.teacher.to(device), self.student.to(device), self.weight.to(device), self.one_to_one.to(device)
        )


def _side_index(sides: list[Side], row_len: int) -> SideIndex:
    counts = np.cumsum([0, *(len(s.rows) for s in sides)])
    shift = [b * row_len for b in range(len(sides))]
    cat = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.int64)) if parts else torch.zeros(0).long()
    return SideIndex(
        rows=cat([s.rows + off for s, off in zip(sides, shift)]),
        first_ids=cat([s.first_ids for s in sides]),
        extra_rows=cat([s.extra_rows + off for s, off in zip(sides, shift)]),
        extra_ids=cat([s.extra_ids for s in sides]),
        extra_span=cat([s.extra_span + c for s, c in zip(sides, counts[:-1])]),
        end_rows=cat([s.end_rows + off for s, off in zip(sides, shift)]),
        last_ids=cat([s.last_ids for s in sides]),
        row_ids=cat([s.row_ids for s in sides]),
    )


def collate(
    alignments: list[Alignment], teacher_len: int, student_len: int, student_mask: Tensor | np.ndarray | None = None
) -> AlignedBatch:
    """The batch's alignments with rows offset by row (``teacher_len``, ``student_len``: padded lengths).

    ``student_mask``: [B, Ls] bool over the student's logits rows (the repo's distillation mask:
    the positions whose next token is distilled); a span is weighted 1 where its predicting row is
    in the mask, else 0."""
    student = _side_index([a.student for a in alignments], student_len)
    weight = torch.ones(len(student.rows))
    if student_mask is not None:
        weight = torch.as_tensor(np.asarray(student_mask)).reshape(-1)[student.rows].float()
    one_to_one = [torch.from_numpy(a.one_to_one) for a in alignments]
    return AlignedBatch(
        teacher=_side_index([a.teacher for a in alignments], teacher_len),
        student=student,
        weight=weight,
        one_to_one=torch.cat(one_to_one) if one_to_one else torch.zeros(0, dtype=torch.bool),
    )
