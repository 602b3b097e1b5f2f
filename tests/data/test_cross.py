"""A student with its own tokenizer: the teacher's rows, the student's tokens of the same text, aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.data.cross import CrossTokenizerData, collate_aligned, encode_stream, row_spans, tokens_within
from distill.data.datamodule import from_stdlib
from distill.data.packing import tokenize
from distill.data.tokenizer import load_tokenizer, train_bpe
from distill.errors import DistillError


@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    """The teacher's packed stdlib rows (BPE 400) and a student tokenizer of its own (BPE 900)."""
    tmp = tmp_path_factory.mktemp("cross")
    dm = from_stdlib(max_docs=12, seq_len=48, batch_size=4, vocab_size=400, cache_dir=str(tmp / "cache"))
    dm.load_documents()
    dm.use_tokenizer(dm.train_tokenizer())
    dm.setup()
    train_bpe([d.text for d in dm.train_docs], 900, tmp / "student")
    data = CrossTokenizerData(dm, load_tokenizer(tmp / "student"), "student-900")
    data.setup()
    return data


def text_of(stream_offsets, text: str, lo: int, hi: int) -> str:
    return text[stream_offsets[lo, 0] : stream_offsets[hi - 1, 1]] if hi > lo else ""


def test_the_stream_is_the_packed_tokens_and_offsets_cover_each_token(cross):
    docs = [d.text for d in cross.base.train_docs]
    enc = encode_stream(cross.teacher_tokenizer, docs, "teacher", batch_size=5)  # batches: offsets shift on
    assert np.array_equal(enc.ids, tokenize(docs, cross.teacher_tokenizer))
    stream = "".join(d + "\x00" for d in docs)  # each EOS covers one virtual character after its document
    tok = cross.teacher_tokenizer
    for i in np.random.default_rng(0).choice(len(enc.ids), 200, replace=False):
        start, end = enc.offsets[i]
        if enc.special[i]:
            assert stream[start:end] == "\x00"
        elif stream[start:end].isascii():  # a byte token of a wider character covers the whole character
            assert tok.decode([enc.ids[i]]) == stream[start:end]


def test_each_student_row_holds_the_tokens_wholly_inside_its_teacher_row():
    teacher = np.array([[0, 3], [3, 5], [5, 9], [9, 12], [12, 13], [13, 20]])  # two rows of three tokens
    student = np.array([[0, 2], [2, 4], [4, 9], [9, 10], [10, 13], [13, 20]])
    spans = row_spans(teacher, 2, 3)
    assert spans.tolist() == [[0, 9], [9, 20]]
    # [2, 4) is cut by nothing; [4, 9) ends at the edge: in; the first row's student tokens are 0..2
    assert tokens_within(student, spans).tolist() == [[0, 3], [3, 6]]
    assert tokens_within(student, np.array([[1, 9]])).tolist() == [[1, 3]]  # [0, 2) starts before: out


def test_rows_are_the_teachers_and_every_span_covers_one_text_on_both_sides(cross):
    data = cross.datasets["train"]
    assert len(data) == len(cross.base.train_blocks)
    s_tok, t_tok = cross.tokenizer, cross.teacher_tokenizer
    checked = 0
    for i in range(0, len(data), max(1, len(data) // 12)):
        inputs, targets, row, extras = data[i]
        assert row == i and torch.equal(extras["teacher_inputs"], torch.as_tensor(cross.base.train_blocks[i][:-1]))
        teacher, student = data.rows(i)
        n = len(student.ids)
        assert inputs.shape == targets.shape == (cross.student_len,)
        assert torch.equal(targets[: n - 1], torch.as_tensor(student.ids[1:])) and (targets[n - 1 :] == -100).all()
        a = extras["alignment"]
        for k in range(len(a)):  # the span's tokens, first then later ones, decode to the same text
            t_ids = [teacher.ids[a.teacher.rows[k] + 1], *a.teacher.extra_ids[a.teacher.extra_span == k]]
            s_ids = [student.ids[a.student.rows[k] + 1], *a.student.extra_ids[a.student.extra_span == k]]
            assert t_tok.decode(t_ids) == s_tok.decode(s_ids)
            checked += 1
    assert checked > 100
    stats = cross.stats["alignment"]["val"]
    assert stats["spans"] > 0.8 * stats["student_tokens"]  # two BPEs of one corpus share most boundaries
    assert "aligned spans" in stats["summary"]


def test_a_batch_indexes_its_flattened_rows_and_weighs_out_padding(cross):
    loader = cross.train_dataloader()
    inputs, targets, rows, extras = next(iter(loader))
    aligned, width = extras["aligned"], extras["teacher_inputs"].shape[1]
    assert inputs.shape == (cross.batch_size, cross.student_len) and width == cross.seq_len
    assert aligned.student.rows.max() < inputs.numel() and aligned.teacher.rows.max() < extras["teacher_inputs"].numel()
    valid = (targets != -100).reshape(-1)
    assert torch.equal(aligned.weight.bool(), valid[aligned.student.rows])
    # the same rows one at a time give the same spans (offsets by row only)
    items = [cross.datasets["train"][int(r)] for r in rows]
    assert len(collate_aligned(items)[3]["aligned"]) == len(aligned)


def test_a_student_tokenizer_without_offsets_is_refused_in_one_line(cross):
    class Slow:
        is_fast = False
        eos_token_id = 0

    with pytest.raises(DistillError, match="slow tokenizer without character offsets"):
        CrossTokenizerData(cross.base, Slow(), "slow")


# ---------------------------------------------------------------- several teachers: views of the same text


@pytest.fixture(scope="module")
def viewed(cross, tmp_path_factory):
    """The same teacher rows with a third tokenizer's view (BPE 650), the student's own (BPE 900) or the teacher's."""
    tmp = tmp_path_factory.mktemp("view")
    train_bpe([d.text for d in cross.base.train_docs], 650, tmp / "third")
    third = load_tokenizer(tmp / "third")
    own = CrossTokenizerData(cross.base, cross.tokenizer, "student-900", views=[("third-650", third)])
    shared = CrossTokenizerData(cross.base, None, "unused", views=[("third-650", third)])
    own.setup(), shared.setup()
    return own, shared, third


def test_a_view_holds_its_tokens_of_the_row_text_and_aligns_them_with_the_students(viewed):
    own, _, third = viewed
    data = own.datasets["train"]
    checked = 0
    for i in range(0, len(data), max(1, len(data) // 10)):
        teacher, student = data.rows(i)
        [view] = data.view_rows(i)
        inputs, _, _, extras = data[i]
        [(view_ids, a)] = extras["views"]
        assert torch.equal(view_ids[: len(view.ids)], torch.as_tensor(view.ids))
        # the view's tokens lie inside the teacher row's characters, as the student's do
        assert view.offsets[:, 0].min() >= teacher.offsets[:, 0].min()
        assert view.offsets[:, 1].max() <= teacher.offsets[:, 1].max()
        for k in range(len(a)):  # each span's tokens decode to one text on both sides
            v_ids = [view.ids[a.teacher.rows[k] + 1], *a.teacher.extra_ids[a.teacher.extra_span == k]]
            s_ids = [student.ids[a.student.rows[k] + 1], *a.student.extra_ids[a.student.extra_span == k]]
            assert third.decode(v_ids) == own.tokenizer.decode(s_ids)
            checked += 1
    assert checked > 100
    assert own.stats["alignment"]["val"]["views"][0]["spans"] > 0  # each view's alignment is counted


def test_a_student_sharing_the_first_teachers_tokenizer_reads_the_packed_rows_exactly(viewed, cross):
    _, shared, _ = viewed
    assert shared.tokenizer is cross.base.tokenizer and shared.student_len == cross.seq_len
    loader = shared.train_dataloader()
    inputs, targets, rows, extras = next(iter(loader))
    blocks = torch.as_tensor(cross.base.train_blocks[rows.numpy()])
    assert torch.equal(inputs, blocks[:, :-1]) and torch.equal(targets, blocks[:, 1:])
    [(view_ids, aligned)] = extras["views"]
    assert view_ids.shape[0] == inputs.shape[0] and aligned.student.rows.max() < inputs.numel()
    assert aligned.teacher.rows.max() < view_ids.numel()
