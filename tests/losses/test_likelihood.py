"""ALM over word chunks (``loss.alm.chunks=words``, ``distill.losses.likelihood``): which spans form a
chunk, checked on real tokenizers' text and against a plain walk over the spans; the loss's value and
gradient against a plain reference (each chunk's tokens and then a space, one binary KL per chunk).
ALM over spans is tested with the other cross-vocabulary terms in ``test_cross_vocab.py``, whose
fixtures (ragged random alignments of two rows) these reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.align.batch import collate
from distill.errors import DistillError
from distill.losses.cross_vocab import cross_vocab_loss
from distill.losses.likelihood import WordBreaks, word_chunks
from tests.losses.test_cross_vocab import VS, VT, _groups, ragged_rows

LT, LS = 30, 26  # longer rows than test_cross_vocab's: a dozen shared ends each, so several chunks close


def _rows(seed):
    """Two rows of ragged spans (1-4 tokens a side) over 60 characters, a tail unaligned."""
    return ragged_rows(seed, ((LT, LS), (LT - 5, LS - 3)), characters=60, shared=12)


def _logits(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, LS, VS, generator=g, dtype=torch.float64) * 2), (
        torch.randn(2, LT, VT, generator=g, dtype=torch.float64) * 2
    )


def _breaks(seed: int) -> WordBreaks:
    """Random flags, dense enough that most rows hold several closed chunks."""
    g = torch.Generator().manual_seed(seed)
    return WordBreaks(
        torch.rand(VT, generator=g) < 0.6, torch.rand(VT, generator=g) < 0.2, torch.rand(VS, generator=g) < 0.5
    )


def chunks_reference(rows, breaks: WordBreaks) -> list[list[int]]:
    """Walk each row's spans in order: a span that is not followed (on both sides) by the next one drops
    the chunk in progress; a word boundary after a span (the next teacher token begins with a space, this
    one does not end in whitespace) closes the chunk in progress and opens the next. Returns the closed
    chunks, each a list of global span indices."""
    chunks, base = [], 0
    for a, _, _ in rows:
        current = None
        for k in range(len(a)):
            if current is not None:
                current.append(base + k)
            last = k + 1 == len(a)
            follows = not last and all(side.rows[k + 1] == side.end_rows[k] for side in (a.teacher, a.student))
            if not follows:
                current = None
            elif (
                breaks.teacher_space[a.teacher.first_ids[k + 1]] and not breaks.teacher_white_end[a.teacher.last_ids[k]]
            ):
                if current:
                    chunks.append(current)
                current = []
        base += len(a)
    return chunks


def _log_softmax(logits, row, T):
    return torch.log_softmax(logits[row] / T, -1)


def alm_words_reference(s, t, rows, breaks: WordBreaks, T: float):
    """Per closed chunk: each model's log-probability of all its spans' tokens plus that of a token
    beginning with a space after it; the binary KL of the two; the mean over chunks, × T²."""
    spans = []  # (row of the batch, student group, teacher group) per global span index
    for b, (a, t_ids, s_ids) in enumerate(rows):
        spans += [(b, _groups(a.student, k, s_ids), _groups(a.teacher, k, t_ids)) for k in range(len(a))]
    total, chunks = 0.0, chunks_reference(rows, breaks)
    for chunk in chunks:
        b = spans[chunk[0]][0]
        lt = sum(_log_softmax(t[b], r, T)[tok] for k in chunk for r, tok in spans[k][2])
        ls = sum(_log_softmax(s[b], r, T)[tok] for k in chunk for r, tok in spans[k][1])
        t_end, s_end = spans[chunk[-1]][2][-1][0] + 1, spans[chunk[-1]][1][-1][0] + 1  # the span's last token
        lt = lt + torch.logsumexp(_log_softmax(t[b], t_end, T)[breaks.teacher_space], -1)
        ls = ls + torch.logsumexp(_log_softmax(s[b], s_end, T)[breaks.student_space], -1)
        pt, ps = lt.exp(), ls.exp()
        total = total + pt * (lt - ls) + (1 - pt) * (torch.log1p(-pt) - torch.log1p(-ps))
    return total / len(chunks) * T**2, len(chunks)


def test_sides_record_each_spans_last_token():
    for a, t_ids, s_ids in _rows(0):
        for side, ids in ((a.teacher, t_ids), (a.student, s_ids)):
            for k in range(len(a)):
                last_row = _groups(side, k, ids)[-1][0] if len(_groups(side, k, ids)) > 1 else side.rows[k]
                assert side.end_rows[k] == max(r for r, _ in _groups(side, k, ids)) + 1 >= last_row + 1
                assert side.last_ids[k] == ids[side.end_rows[k]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_word_chunks_are_the_plain_walks_chunks(seed):
    rows, breaks = _rows(seed), _breaks(seed)
    batch = collate([a for a, _, _ in rows], LT, LS)
    chunk, closing = word_chunks(batch, breaks)
    got = [torch.nonzero(chunk == c).squeeze(-1).tolist() for c in range(len(closing)) if closing[c] >= 0]
    assert got == chunks_reference(rows, breaks)
    assert all(closing[c] == max(members) for c, members in zip(torch.nonzero(closing >= 0).squeeze(-1), got))


@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alm_over_word_chunks_matches_the_reference_value_and_grad(seed, T):
    rows, breaks = _rows(seed), _breaks(seed)
    s, t = _logits(seed)
    batch = collate([a for a, _, _ in rows], LT, LS)
    s_kernel = s.float().detach().requires_grad_(True)
    loss, _ = cross_vocab_loss(s_kernel, t.float(), batch, weights={"alm": 1.0}, temperature=T, alm_breaks=breaks)
    (g,) = torch.autograd.grad(loss, s_kernel)
    s_ref = s.detach().requires_grad_(True)
    ref, count = alm_words_reference(s_ref, t, rows, breaks, T)
    (g_ref,) = torch.autograd.grad(ref, s_ref)
    assert count >= 2  # the fixture has chunks to compare
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-6)
    # the rows after each chunk (where "then a space" is read) learn, beside the chunk's own rows
    closing_rows = {int(batch.student.end_rows[k]) for k in word_chunks(batch, breaks)[1] if k >= 0}
    assert all(g.reshape(-1, VS)[r].abs().sum() > 0 for r in closing_rows)


def test_a_masked_span_masks_its_chunk_and_no_chunk_gives_zero():
    rows, breaks = _rows(1), _breaks(1)
    s, t = _logits(1)
    mask = np.ones((2, LS), bool)
    full = collate([a for a, _, _ in rows], LT, LS, student_mask=mask)
    chunk, closing = word_chunks(full, breaks)
    c = next(c for c in range(len(closing)) if (chunk == c).sum() >= 2)  # a closed chunk of several spans
    members = torch.nonzero(chunk == c).squeeze(-1)
    b, row = divmod(int(full.student.rows[members[-1]]), LS)
    mask[b, row] = False  # one of its spans is not distilled: the whole chunk is not
    masked = collate([a for a, _, _ in rows], LT, LS, student_mask=mask)
    s = s.float().requires_grad_(True)
    loss, _ = cross_vocab_loss(s, t.float(), masked, weights={"alm": 1.0}, alm_breaks=breaks)
    (g,) = torch.autograd.grad(loss, s)
    # its spans' rows after the first (the first is also the row after the chunk before: its "then a space")
    own = set(full.student.rows[members[1:]].tolist())
    own |= {int(r) for r, k in zip(full.student.extra_rows, full.student.extra_span) if k in members}
    assert own and all(g.reshape(-1, VS)[r].abs().sum() == 0 for r in own)
    others = set(full.student.rows[(chunk >= 0) & (chunk != c)].tolist()) - own
    assert any(g.reshape(-1, VS)[r].abs().sum() > 0 for r in others)
    none = WordBreaks(torch.zeros(VT, dtype=torch.bool), breaks.teacher_white_end, breaks.student_space)
    zero, _ = cross_vocab_loss(s, t.float(), full, weights={"alm": 1.0}, alm_breaks=none)
    assert zero.item() == 0.0


def test_word_chunks_on_real_tokenizers_start_and_end_at_a_space_after_a_word():
    """Two real families (byte-level BPE, SentencePiece-style with '▁'): every closed chunk's text begins
    with a space that follows a character that is not whitespace, and the text after it does too."""
    from distill.align.encode import TextAligner
    from tests.align.helpers import FAMILIES, corpus

    t_tok, s_tok = FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()
    text = corpus()[0][:1500]
    t_row, s_row, alignment = TextAligner(t_tok, s_tok).align([text])
    batch = collate([alignment], len(t_row.ids), len(s_row.ids))
    chunk, closing = word_chunks(batch, WordBreaks.of(t_tok, s_tok))
    valid = torch.nonzero(closing >= 0).squeeze(-1)
    assert len(valid) > 50
    for c in valid.tolist():
        members = torch.nonzero(chunk == c).squeeze(-1)
        start = int(t_row.offsets[int(batch.teacher.rows[members[0]]) + 1, 0])
        end = int(t_row.offsets[int(batch.teacher.end_rows[members[-1]]), 1])
        assert text[start] == " " and not text[start - 1].isspace(), repr(text[start - 1 : end + 1])
        assert text[end] == " " and not text[end - 1].isspace(), repr(text[start : end + 1])
        s_start = int(s_row.offsets[int(batch.student.rows[members[0]]) + 1, 0])
        assert s_start == start  # both sides' chunk begins at that space


def test_space_flags_read_each_spelling():
    from distill.align.vocab import space_flags
    from tests.align.helpers import FAMILIES

    for name in ("bpe4096", "byte_fallback"):
        tok = FAMILIES[name]()
        starts, white = space_flags(tok)
        assert starts[tok.convert_tokens_to_ids(tok.tokenize(" return")[0])]
        assert not starts[tok.convert_tokens_to_ids(tok.tokenize("return")[0])] or name == "byte_fallback"
        assert white[tok.convert_tokens_to_ids(tok.tokenize("x\n")[-1])]
        assert not starts[tok.eos_token_id] and not white[tok.eos_token_id]


def test_the_setting_is_checked():
    from distill.losses.objective import Objective

    assert Objective({"alm": 1.0}).alm_spec == {"chunks": "spans", "binarization": 1.0}
    with pytest.raises(DistillError, match="loss.alm.chunks must be one of spans, words"):
        Objective({"alm": 1.0}, alm={"chunks": "sentences"})
    with pytest.raises(DistillError, match="loss.alm.binarization must be > 0"):
        Objective({"alm": 1.0}, alm={"binarization": 0})
