"""Classes inside a prefix class, for ``loss.prefix_kl.within``: what ``prefix_kl`` leaves to CE alone.

``prefix_kl`` compares the two models on prefix classes (``distill.align.vocab.prefix_classes``): a
Llama 3-style student's ``.append``, ``.items`` and ``.`` are all in class ``.``, and how the student
spreads its mass between them is not compared with anything. The teacher knows: where its own next
token is exactly the class string (a GPT-2-style ``.``), its next row says what follows the ``.``.

Inside class c, a student token s is c followed by a remainder r(s) (``append``); the teacher's mass
of class c is its other tokens of the class (c followed by their remainders) and its token c itself,
whose next row spreads that token's mass over what follows. Remainders and next tokens are compared
on their own shared strings, as the classes are: the subclasses of c are the empty string and every
student remainder that is a teacher token too, and a remainder or a teacher token belongs to the
longest of them it begins with. ``distill.losses.within`` reads these tables at each span whose
teacher token is its class's string. Pure functions over the two ``vocabulary_text`` tables.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WithinClasses:
    """Every split class's subclasses, numbered across classes (G in all; index G: no subclass)."""

    count: int  # G
    owner: np.ndarray  # [G] int64: the prefix class of each subclass
    student: np.ndarray  # [Vs] int64: each student token's subclass, G where its class is not split
    teacher_rest: np.ndarray  # [Vt] int64: the subclass of a teacher token longer than its class string, else G
    teacher_exact: np.ndarray  # [Vt] bool: the token's text is its class's string (its next row splits the class)
    split_row: np.ndarray  # [C] int64: each class's row of ``next_map``, −1 where it is not split
    next_map: np.ndarray  # [n_split, Vt] int64: the subclass a teacher token read after the class string falls in


def longest_in(text: bytes, strings) -> bytes:
    """The longest of ``strings`` that ``text`` begins with (b"" when none: the empty subclass)."""
    for cut in range(len(text), 0, -1):
        if text[:cut] in strings:
            return text[:cut]
    return b""


def subclass_strings(shared: list[bytes], s_text: dict, t_text: dict, s_prefix: np.ndarray) -> dict[int, list[bytes]]:
    """{class: its subclass strings, b"" first} for the classes with two or more: the remainders of the
    class's student tokens that are teacher tokens too."""
    out = defaultdict(lambda: [b""])
    for text, ids in s_text.items():
        c = int(s_prefix[ids[0]])
        if c < len(shared) and (rest := text[len(shared[c]) :]) and rest in t_text:
            out[c].append(rest)
    return {c: sorted(subs, key=len) for c, subs in out.items() if len(subs) > 1}


def within_classes(shared, t_text, s_text, t_prefix, s_prefix) -> WithinClasses:
    """The tables for ``shared`` strings and the tokens' prefix classes (``prefix_classes``' outputs)."""
    splits = subclass_strings(shared, s_text, t_text, s_prefix)
    ids, owner = {}, []
    for c, subs in splits.items():
        for k in subs:
            ids[c, k] = len(owner)
            owner.append(c)
    G = len(owner)
    student = np.full(len(s_prefix), G, np.int64)
    for text, tok in s_text.items():
        c = int(s_prefix[tok[0]])
        if c in splits:
            student[tok] = ids[c, longest_in(text[len(shared[c]) :], set(splits[c]))]
    teacher_rest, exact = np.full(len(t_prefix), G, np.int64), np.zeros(len(t_prefix), bool)
    for text, tok in t_text.items():
        c = int(t_prefix[tok[0]])
        if c >= len(shared):
            continue
        exact[tok] = text == shared[c]
        if c in splits and text != shared[c]:
            teacher_rest[tok] = ids[c, longest_in(text[len(shared[c]) :], set(splits[c]))]
    split_row = np.full(len(shared) + 3, -1, np.int64)  # + EOS, BOS and the catch-all: never split
    next_map = np.empty((len(splits), len(t_prefix)), np.int64)
    by_string = defaultdict(list)  # subclass string -> [(row, subclass id)]
    for row, (c, subs) in enumerate(splits.items()):
        split_row[c] = row
        next_map[row] = ids[c, b""]  # a next token that begins with no remainder, and the special tokens
        for k in subs[1:]:
            by_string[k].append((row, ids[c, k]))
    for text, tok in t_text.items():
        for cut in range(1, len(text) + 1):  # shorter first: the longest match writes last
            for row, sub in by_string.get(text[:cut], ()):
                next_map[row, tok] = sub
    return WithinClasses(G, np.asarray(owner, np.int64), student, teacher_rest, exact, split_row, next_map)
