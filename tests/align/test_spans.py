"""Alignment by character offsets: against a plain two-pointer walk, and on hard text with real tokenizers."""

import numpy as np
import pytest
from transformers import ByT5Tokenizer

from distill.align.encode import TextAligner, encode_documents, encode_ids, truncate
from distill.align.spans import align_offsets
from distill.errors import DistillError
from tests.align.helpers import FAMILIES, HARD_TEXTS

PAIRS = [("bpe4096", "bpe300"), ("bpe4096", "byte_fallback"), ("bpe4096", "wordpiece"), ("byte_fallback", "wordpiece")]


def walk_groups(t_offsets, s_offsets):
    """The reference: walk both token lists, advancing the side whose token ends first; at an end both
    reach, take every further token ending there too (byte tokens of one character), close the group."""
    t_cov = [i for i, (a, b) in enumerate(t_offsets) if b > a]
    s_cov = [i for i, (a, b) in enumerate(s_offsets) if b > a]
    groups, t, s, tg, sg = [], 0, 0, [], []
    while t < len(t_cov) and s < len(s_cov):
        te, se = t_offsets[t_cov[t]][1], s_offsets[s_cov[s]][1]
        if te < se:
            tg.append(t_cov[t])
            t += 1
        elif se < te:
            sg.append(s_cov[s])
            s += 1
        else:
            while t < len(t_cov) and t_offsets[t_cov[t]][1] == te:
                tg.append(t_cov[t])
                t += 1
            while s < len(s_cov) and s_offsets[s_cov[s]][1] == te:
                sg.append(s_cov[s])
                s += 1
            groups.append((tg, sg))
            tg, sg = [], []
    return groups


def groups_of(side, k):
    """Token positions of span k on one side of an alignment."""
    return [int(side.rows[k]) + 1, *(int(r) + 1 for r in side.extra_rows[side.extra_span == k])]


def random_offsets(rng, length, cut_prob, byte_tokens):
    """Contiguous tokens over ``length`` characters, a leading zero-width token (context), and some
    characters split into several byte tokens that all carry the character's offsets."""
    cuts = [0, *sorted({int(c) for c in np.flatnonzero(rng.random(length - 1) < cut_prob) + 1}), length]
    out = [(0, 0)]
    for a, b in zip(cuts, cuts[1:]):
        if b - a == 1 and rng.random() < byte_tokens:
            out += [(a, b)] * int(rng.integers(2, 5))
        else:
            out.append((a, b))
    return np.asarray(out)


@pytest.mark.parametrize("seed", range(20))
def test_spans_equal_the_two_pointer_walk(seed):
    rng = np.random.default_rng(seed)
    t_off, s_off = random_offsets(rng, 60, 0.5, 0.3), random_offsets(rng, 60, 0.3, 0.3)
    a = align_offsets(np.arange(len(t_off)), t_off, np.arange(len(s_off)), s_off, max_span_tokens=100)
    expected = walk_groups(t_off.tolist(), s_off.tolist())
    assert [(groups_of(a.teacher, k), groups_of(a.student, k)) for k in range(len(a))] == expected
    assert a.stats.spans == len(expected) and a.stats.unaligned_teacher == a.stats.unaligned_student == 0
    assert np.array_equal(a.one_to_one, [len(t) == 1 and len(s) == 1 for t, s in expected])


def test_long_stretches_are_counted_not_silently_dropped():
    t_off = np.array([(0, 0), *((i, i + 3) for i in range(0, 24, 3))])  # tokens of 3 characters
    s_off = np.array([(0, 0), *((i, i + 4) for i in range(0, 24, 4))])  # of 4: a shared boundary every 12
    a = align_offsets(np.arange(9), t_off, np.arange(7), s_off, max_span_tokens=3)
    assert len(a) == 0 and a.stats.long == 2 and a.stats.longest_stretch == 12
    assert a.stats.unaligned_teacher == 8 and a.stats.unaligned_student == 6
    assert len(align_offsets(np.arange(9), t_off, np.arange(7), s_off, max_span_tokens=4)) == 2
    # no shared boundary before the end of a cut row: the whole row is one ragged, unaligned stretch
    cut = align_offsets(np.arange(4), t_off[:4], np.arange(3), s_off[:3])
    assert len(cut) == 0 and cut.stats.longest_stretch == 9 and cut.stats.unaligned_teacher == 3


def visible(chars: str) -> str:
    return "".join(c for c in chars if c.isprintable() and not c.isspace())


def check_alignment(text, t, s, a, exact=True):
    """Every span covers the same characters on both sides (``exact=False``: up to the whitespace and
    control characters a WordPiece skips), each side's row predicts the span's first token, and every
    covering token is in a span or counted."""
    for k in range(len(a)):
        t_pos, s_pos = groups_of(a.teacher, k), groups_of(a.student, k)
        t_chars = text[t.offsets[t_pos, 0].min() : t.offsets[t_pos, 1].max()]
        s_chars = text[s.offsets[s_pos, 0].min() : s.offsets[s_pos, 1].max()]
        assert t.offsets[t_pos, 1].max() == s.offsets[s_pos, 1].max()
        assert t_chars == s_chars if exact else visible(t_chars) == visible(s_chars), (t_chars, s_chars)
        assert t.ids[t_pos[0]] == a.teacher.first_ids[k] and s.ids[s_pos[0]] == a.student.first_ids[k]
    in_spans = len(a.teacher.rows) + len(a.teacher.extra_rows), len(a.student.rows) + len(a.student.extra_rows)
    assert in_spans[0] + a.stats.unaligned_teacher == a.stats.teacher_tokens == int((np.diff(t.offsets) > 0).sum())
    assert in_spans[1] + a.stats.unaligned_student == a.stats.student_tokens == int((np.diff(s.offsets) > 0).sum())


@pytest.mark.parametrize("teacher, student", PAIRS)
@pytest.mark.parametrize("text", HARD_TEXTS, ids=["whitespace", "unicode", "emoji", "escapes"])
def test_hard_text_spans_cover_the_same_characters(teacher, student, text):
    t, s, a = TextAligner(FAMILIES[teacher](), FAMILIES[student]()).align([text])
    joined = text + "\0"  # the EOS's virtual character
    check_alignment(joined, t, s, a, exact="wordpiece" not in (teacher, student))
    assert a.stats.spans >= 0.3 * a.stats.student_tokens or student == "bpe300"
    assert a.stats.no_context == 1  # the row's first token: nothing predicts it


def test_emoji_bytes_merge_against_one_unknown_token():
    teacher, student = FAMILIES["bpe4096"](), FAMILIES["wordpiece"]()
    t, s, a = TextAligner(teacher, student).align(["emoji 👋🏽 end"])
    unk = [k for k in range(len(a)) if a.student.first_ids[k] == student.unk_token_id]
    assert len(unk) == 1  # UNK is text the vocabulary cannot spell: aligned, not treated as a special
    # the space before (WordPiece covers no whitespace), then 👋 and 🏽: four UTF-8 bytes each, a token per byte
    assert teacher.convert_ids_to_tokens(t.ids[groups_of(a.teacher, unk[0])].tolist())[0] == "Ġ"
    assert len(groups_of(a.teacher, unk[0])) == 1 + 8


def test_byte_fallback_pieces_align_with_byte_level_tokens():
    t, s, a = TextAligner(FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()).align(["a ŵ b"])  # ŵ: C5 B5
    pieces = FAMILIES["byte_fallback"]().convert_ids_to_tokens(s.ids.tolist())
    assert pieces.count("<0xC5>") == 1 and pieces.count("<0xB5>") == 1  # two byte pieces, one character
    spans = [k for k in range(len(a)) if "<0xC5>" in [pieces[p] for p in groups_of(a.student, k)]]
    assert len(spans) == 1 and "<0xB5>" in [pieces[p] for p in groups_of(a.student, spans[0])]
    teacher_tokens = FAMILIES["bpe4096"]().convert_ids_to_tokens(t.ids[groups_of(a.teacher, spans[0])].tolist())
    assert teacher_tokens[-2:] == ["Å", "µ"]  # the same two bytes, in GPT-2's printable stand-ins


def test_document_boundaries_pair_eos_with_eos():
    teacher, student = FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()
    docs = ["first doc", "second  one", "über third"]
    t, s, a = TextAligner(teacher, student).align(docs)
    eos_spans = (a.teacher.first_ids == teacher.eos_token_id) & (a.student.first_ids == student.eos_token_id)
    assert eos_spans.sum() == 3 and a.one_to_one[eos_spans].all()
    assert a.stats.special == 0 and a.stats.no_context == 1


def test_special_token_on_one_side_only_is_counted_and_left_out():
    teacher, student = FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()
    text = "before<|endoftext|>after"  # one special token for the teacher, eight pieces for the student
    t, s, a = TextAligner(teacher, student).align([text])
    literal = t.offsets.tolist().index([6, 19])  # the teacher's one token for the literal marker
    assert t.ids[literal] == teacher.convert_tokens_to_ids("<|endoftext|>") and t.special[literal]
    assert a.stats.special == 1 and literal - 1 not in a.teacher.rows.tolist()
    assert a.teacher.first_ids[-1] == teacher.eos_token_id  # the document's own EOS still pairs with the student's
    check_alignment(text + "\0", t, s, a)


def test_tokens_spanning_what_the_other_splits_merge_into_one_span():
    t, s, a = TextAligner(FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()).align([HARD_TEXTS[0]])
    many = [k for k in range(len(a)) if len(groups_of(a.teacher, k)) > 1 and len(groups_of(a.student, k)) > 1]
    assert many  # neither side's tokens nest in the other's: both merge
    assert (~a.one_to_one).sum() >= len(many)


def test_truncated_rows_leave_the_ragged_tail_unaligned_and_counted():
    aligner = TextAligner(FAMILIES["bpe4096"](), FAMILIES["bpe300"]())
    t, s = aligner.encode([HARD_TEXTS[1]])
    full = aligner.align([HARD_TEXTS[1]])[2]
    _, _, cut = aligner.align([HARD_TEXTS[1]], student_len=len(s.ids) // 2)
    assert cut.stats.spans < full.stats.spans and cut.stats.unaligned_teacher > full.stats.unaligned_teacher
    assert (cut.student.rows < len(s.ids) // 2).all() and (cut.student.extra_rows < len(s.ids) // 2).all()
    assert truncate(t, 3).ids.tolist() == t.ids[:3].tolist()


def test_a_slow_tokenizer_is_refused_in_one_line():
    with pytest.raises(DistillError) as err:
        TextAligner(FAMILIES["bpe4096"](), ByT5Tokenizer())
    message = str(err.value)
    assert "\n" not in message and "student tokenizer (ByT5Tokenizer) is a slow tokenizer" in message
    assert "needs a fast tokenizer" in message


def test_a_tokenizer_without_eos_is_refused_in_one_line():
    import copy

    student = copy.deepcopy(FAMILIES["bpe300"]())
    student.eos_token = None
    with pytest.raises(DistillError, match=r"^the student tokenizer has no EOS token"):
        TextAligner(FAMILIES["bpe4096"](), student)
    assert len(encode_documents(student, ["no eos"], eos=False).ids) > 0


@pytest.mark.parametrize("family", ["bpe4096", "byte_fallback", "bpe300"])
@pytest.mark.parametrize("text", HARD_TEXTS, ids=["whitespace", "unicode", "emoji", "escapes"])
def test_offsets_of_generated_ids_equal_the_tokenizers_own(family, text):
    tok = FAMILIES[family]()
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    decoded, row = encode_ids(tok, enc["input_ids"])
    assert decoded == text and row.offsets[:, 1].tolist() == [e for _, e in enc["offset_mapping"]]


def test_a_student_sample_aligns_as_its_text_does():
    """On-policy: the student's sampled ids (not a re-tokenization) against the teacher's tokens of their text."""
    teacher, student = FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()
    aligner = TextAligner(teacher, student)
    ids = student(HARD_TEXTS[2], add_special_tokens=False)["input_ids"] + [student.eos_token_id]
    t, s, a = aligner.align_student_ids(ids)
    _, _, by_text = aligner.align([HARD_TEXTS[2]])
    assert s.special[-1] and s.offsets[-1, 0] == s.offsets[-1, 1]  # the closing EOS: zero-width, no text
    assert a.student.rows.tolist() == by_text.student.rows[:-1].tolist()  # the same spans, but the EOS pair
    assert a.teacher.rows.tolist() == by_text.teacher.rows[:-1].tolist()
    check_alignment(HARD_TEXTS[2], t, s, a)
