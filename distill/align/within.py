"""Classes inside a prefix class, for ``loss.prefix_kl.within``: what ``prefix_kl`` leaves to CE alone.

``prefix_kl`` compares the two models on prefix classes (``distill.align.vocab.prefix_classes``): a
Llama 3-style student's ``.append``, ``.items`` and ``.`` are all in class ``.``, and how the student
spreads its mass between them is not compared with anything. The teacher knows: where its own next
token is exactly the class string (a GPT-2-style ``.``), its next row says what follows the ``.``.
The other way round, where the student's token is the class string (``\n``) and the teacher has longer
tokens of the class (``\n`` + indentation), the student's next row says how it spreads the class.

Inside class c, a token of the side read at one row (the *one-row* side: the student, in the first
case) is c followed by a remainder r (``append``); the other (*two-row*) side's mass of class c is its
other tokens of the class (c followed by their remainders) and its token c itself, whose next row
spreads that token's mass over what follows. Remainders and next tokens are compared on their own
shared strings, as the classes are: the subclasses of c are the empty string and every remainder of a
one-row token that is a token of the two-row side too, and a remainder or a next token belongs to the
longest of them it begins with. ``distill.losses.within`` reads these tables at each span whose
two-row token is its class's string. Pure functions over the two ``vocabulary_text`` tables.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WithinClasses:
    """Every split class's subclasses, numbered across classes (G in all; index G: no subclass), for one
    direction: the two-row side's next row splits the class, the one-row side's tokens fall in subclasses."""

    count: int  # G
    owner: np.ndarray  # [G] int64: the prefix class of each subclass
    one_row: np.ndarray  # [V one-row side] int64: each token's subclass, G where its class is not split
    rest: np.ndarray  # [V two-row side] int64: the subclass of a token longer than its class string, else G
    exact: np.ndarray  # [V two-row side] bool: the token's text is its class's string (its next row splits it)
    split_row: np.ndarray  # [C] int64: each class's row of ``next_map``, −1 where it is not split
    next_map: np.ndarray  # [n_split, V two-row side] int64: the subclass a token read after the class string falls in


def longest_in(text: bytes, strings) -> bytes:
    """The longest of ``strings`` that ``text`` begins with (b"" when none: the empty subclass)."""
    for cut in range(len(text), 0, -1):
        if text[:cut] in strings:
            return text[:cut]
    return b""


def subclass_strings(shared: list[bytes], one_text: dict, two_text: dict, one_prefix: np.ndarray) -> dict[int, list]:
    """{class: its subclass strings, b"" first} for the classes with two or more: the remainders of the
    class's one-row tokens that are two-row tokens too."""
    out = defaultdict(lambda: [b""])
    for text, ids in one_text.items():
        c = int(one_prefix[ids[0]])
        if c < len(shared) and (rest := text[len(shared[c]) :]) and rest in two_text:
            out[c].append(rest)
    return {c: sorted(subs, key=len) for c, subs in out.items() if len(subs) > 1}


def within_classes(shared, two_text, one_text, two_prefix, one_prefix) -> WithinClasses:
    """The tables for ``shared`` strings and the tokens' prefix classes (``prefix_classes``' outputs): the
    teacher's next row splitting the student's classes with (teacher, student) as (two, one), the
    student's splitting the teacher's with (student, teacher)."""
    splits = subclass_strings(shared, one_text, two_text, one_prefix)
    ids, owner = {}, []
    for c, subs in splits.items():
        for k in subs:
            ids[c, k] = len(owner)
            owner.append(c)
    G = len(owner)
    one_row = np.full(len(one_prefix), G, np.int64)
    for text, tok in one_text.items():
        c = int(one_prefix[tok[0]])
        if c in splits:
            one_row[tok] = ids[c, longest_in(text[len(shared[c]) :], set(splits[c]))]
    rest, exact = np.full(len(two_prefix), G, np.int64), np.zeros(len(two_prefix), bool)
    for text, tok in two_text.items():
        c = int(two_prefix[tok[0]])
        if c >= len(shared):
            continue
        exact[tok] = text == shared[c]
        if c in splits and text != shared[c]:
            rest[tok] = ids[c, longest_in(text[len(shared[c]) :], set(splits[c]))]
    split_row = np.full(len(shared) + 3, -1, np.int64)  # + EOS, BOS and the catch-all: never split
    next_map = np.empty((len(splits), len(two_prefix)), np.int64)
    by_string = defaultdict(list)  # subclass string -> [(row, subclass id)]
    for row, (c, subs) in enumerate(splits.items()):
        split_row[c] = row
        next_map[row] = ids[c, b""]  # a next token that begins with no remainder, and the special tokens
        for k in subs[1:]:
            by_string[k].append((row, ids[c, k]))
    for text, tok in two_text.items():
        for cut in range(1, len(text) + 1):  # shorter first: the longest match writes last
            for row, sub in by_string.get(text[:cut], ()):
                next_map[row, tok] = sub
    return WithinClasses(G, np.asarray(owner, np.int64), one_row, rest, exact, split_row, next_map)
