"""The subclasses inside prefix classes (``loss.prefix_kl.within``): a small case written out, then the
invariants on real tokenizers (a Llama 3-style student keeps '.' with the word after it, GPT-2's does not)."""

import numpy as np
import pytest

from distill.align.within import longest_in, within_classes
from tests.align.helpers import FAMILIES, corpus

TEACHER = [".", "append", "app", "end", "items", "(", "(s", "x", "\n", ")", "a", "\n  "]
STUDENT = [".", ".append", ".items", ".ap", "(", "(self", "x", ")", ")\n", "\n", ".x", "  "]


def toy():
    """The two vocabularies as ``vocabulary_text`` tables, the shared strings, each token's prefix class."""
    t_text = {s.encode(): [i] for i, s in enumerate(TEACHER)}
    s_text = {s.encode(): [i] for i, s in enumerate(STUDENT)}
    shared = sorted(set(t_text) & set(s_text))
    catch_all = len(shared) + 2
    cls = lambda text: max(
        (i for i, c in enumerate(shared) if text.startswith(c)), key=lambda i: len(shared[i]), default=catch_all
    )
    t_prefix = np.array([cls(s.encode()) for s in TEACHER])
    s_prefix = np.array([cls(s.encode()) for s in STUDENT])
    return shared, t_text, s_text, t_prefix, s_prefix


def test_a_small_case_written_out():
    shared, t_text, s_text, t_prefix, s_prefix = toy()
    w = within_classes(shared, t_text, s_text, t_prefix, s_prefix)
    dot, paren, close = shared.index(b"."), shared.index(b"("), shared.index(b")")
    # '.': '', 'append', 'items', 'x' (the remainders that are teacher tokens; 'ap' is not one);
    # ')': '', '\n'; '(' does not split ('self' is no teacher token)
    assert w.count == 6 and sorted(w.owner.tolist()) == sorted([dot] * 4 + [close] * 2)
    assert w.split_row[paren] == -1 and w.split_row[dot] >= 0 and w.split_row[close] >= 0
    sub = lambda c, k: next(g for g in range(w.count) if w.owner[g] == c and w.one_row[STUDENT.index(k)] == g)
    empty, append, items, x = sub(dot, "."), sub(dot, ".append"), sub(dot, ".items"), sub(dot, ".x")
    assert len({empty, append, items, x}) == 4
    assert w.one_row[STUDENT.index(".ap")] == empty  # 'ap' is no subclass: with '.' alone
    assert w.one_row[STUDENT.index("(self")] == w.count and w.one_row[STUDENT.index("(")] == w.count
    assert w.one_row[STUDENT.index(")\n")] != w.one_row[STUDENT.index(")")]
    row = w.next_map[w.split_row[dot]]  # what follows a teacher's '.'
    assert row[TEACHER.index("append")] == append and row[TEACHER.index("items")] == items
    assert row[TEACHER.index("x")] == x
    assert row[TEACHER.index("app")] == row[TEACHER.index("end")] == row[TEACHER.index("(")] == empty
    assert w.exact.tolist() == [t.encode() in shared for t in TEACHER]
    assert w.rest[TEACHER.index("(s")] == w.count  # longer than '(', but '(' does not split
    assert (w.rest[[i for i, t in enumerate(TEACHER) if t != "(s"]] == w.count).all()


def test_the_other_way_the_students_next_row_splits_the_teachers_longer_tokens():
    """(student, teacher) as (two-row, one-row) sides: the teacher's '\n  ' is '\n' then '  ', a student token,
    so class '\n' splits into '' and '  '; what the student writes after its '\n' falls in one of them."""
    shared, t_text, s_text, t_prefix, s_prefix = toy()
    w = within_classes(shared, s_text, t_text, s_prefix, t_prefix)
    newline = shared.index(b"\n")
    assert w.count == 2 and (w.owner == newline).all() and (w.split_row >= 0).sum() == 1
    empty, spaces = w.one_row[TEACHER.index("\n")], w.one_row[TEACHER.index("\n  ")]
    assert {int(empty), int(spaces)} == {0, 1}
    row = w.next_map[w.split_row[newline]]  # the student's next token after its '\n'
    assert row[STUDENT.index("  ")] == spaces and row[STUDENT.index("x")] == row[STUDENT.index(".")] == empty
    assert w.exact[STUDENT.index("\n")] and not w.exact[STUDENT.index(".append")]


def test_longest_in_picks_the_longest_string_a_text_begins_with():
    strings = {b"", b"a", b"ab", b"abc"}
    assert longest_in(b"abd", strings) == b"ab" and longest_in(b"xyz", strings) == b""
    assert longest_in(b"abcd", strings) == b"abc"


@pytest.mark.parametrize("student", ["llama3", "byte_fallback"])
def test_on_real_tokenizers_each_subclass_is_a_string_its_members_begin_with(student):
    from distill.align.vocab import vocab_mapping, vocabulary_text
    from distill.data.tokenizer import train_llama3_bpe
    from tests.align.helpers import workdir

    if student == "llama3":
        out = workdir() / "llama3_2048"
        if not (out / "tokenizer.json").exists():
            train_llama3_bpe(corpus(), 2048, out)
        from transformers import AutoTokenizer

        s_tok = AutoTokenizer.from_pretrained(str(out))
    else:
        s_tok = FAMILIES[student]()
    t_tok = FAMILIES["bpe4096"]()
    mapping = vocab_mapping(t_tok, s_tok, prefixes=True)
    w, t_text, s_text = mapping.within, vocabulary_text(t_tok), vocabulary_text(s_tok)
    shared = sorted(set(t_text) & set(s_text))
    assert w.count > 0 and w.next_map.shape == (int((w.split_row >= 0).sum()), mapping.teacher_size)
    strings = {}  # each subclass's string, read back from the student tokens in it
    for text, ids in s_text.items():
        g = w.one_row[ids[0]]
        c = mapping.student_prefix[ids[0]]
        if g == w.count:
            assert c >= len(shared) or w.split_row[c] == -1
            continue
        assert w.owner[g] == c
        rest = text[len(shared[c]) :]
        strings.setdefault(g, set()).add(rest)
    for rests in strings.values():  # the subclass string: the shortest remainder, a prefix of every other
        k = min(rests, key=len)
        assert all(r.startswith(k) for r in rests) and (k == b"" or k in t_text)
    for row_class in np.flatnonzero(w.split_row >= 0):  # a teacher token after the class string
        row = w.next_map[w.split_row[row_class]]
        assert (w.owner[row] == row_class).all()
    if student == "llama3":  # GPT-2 cuts '.' from the word after it; Llama 3 does not
        assert w.split_row[shared.index(b".")] >= 0
    back = mapping.within_student  # the other way: the student's next row, the teacher's tokens
    assert back.next_map.shape == (int((back.split_row >= 0).sum()), mapping.student_size)
    assert len(back.one_row) == mapping.teacher_size and len(back.exact) == mapping.student_size
