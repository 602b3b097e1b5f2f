"""Row alignments collated into flat indices: each index reads the right row of the padded batch."""

import numpy as np
import torch

from distill.align.batch import collate
from distill.align.encode import TextAligner
from tests.align.helpers import FAMILIES

DOCS = (["short one"], ["a longer row  with 日本語 and more", "two docs"])


def test_flat_indices_read_each_rows_own_positions():
    aligner = TextAligner(FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]())
    rows = [aligner.align(docs) for docs in DOCS]
    t_len, s_len = max(len(t.ids) for t, _, _ in rows), max(len(s.ids) for _, s, _ in rows)
    t_pad = np.full((2, t_len), -1)
    s_pad = np.full((2, s_len), -1)
    for b, (t, s, _) in enumerate(rows):
        t_pad[b, : len(t.ids)], s_pad[b, : len(s.ids)] = t.ids, s.ids
    batch = collate([a for _, _, a in rows], t_len, s_len)
    assert len(batch) == sum(len(a) for _, _, a in rows) and batch.weight.tolist() == [1.0] * len(batch)
    # the token after each predicting row is the span's first token, in the padded, flattened batch
    assert t_pad.reshape(-1)[batch.teacher.rows + 1].tolist() == batch.teacher.first_ids.tolist()
    assert s_pad.reshape(-1)[batch.student.rows + 1].tolist() == batch.student.first_ids.tolist()
    assert s_pad.reshape(-1)[batch.student.extra_rows + 1].tolist() == batch.student.extra_ids.tolist()
    assert t_pad.reshape(-1)[batch.teacher.extra_rows + 1].tolist() == batch.teacher.extra_ids.tolist()
    # spans are numbered across the batch: the second row's merged tokens point past the first row's spans
    k0 = len(rows[0][2])
    second = batch.student.extra_rows >= s_len
    assert (batch.student.extra_span[second] >= k0).all() and (batch.student.extra_span[~second] < k0).all()


def test_a_student_mask_weights_the_spans_its_rows_predict():
    t, s, a = TextAligner(FAMILIES["bpe4096"](), FAMILIES["bpe300"]()).align(DOCS[1])
    mask = torch.zeros(1, len(s.ids), dtype=torch.bool)
    mask[0, len(s.ids) // 2 :] = True  # e.g. the response half of a conversation
    batch = collate([a], len(t.ids), len(s.ids), student_mask=mask)
    assert batch.weight.tolist() == (batch.student.rows >= len(s.ids) // 2).float().tolist()
    assert 0 < batch.weight.sum() < len(batch)
    assert batch.to("cpu").weight is not None and len(collate([], 4, 4)) == 0
