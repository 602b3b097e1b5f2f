"""Which tokens two vocabularies share: the same text, however each tokenizer spells it.

Tokenizers spell the same text differently: byte-level BPE (GPT-2, Llama 3, Qwen) writes a space
as 'Ġ' and every byte as a printable stand-in character; SentencePiece-style vocabularies (Llama 2,
Gemma, Mistral) write a space as '▁' and bytes as '<0xNN>' pieces; WordPiece marks a word's
continuation with '##'. Each token is reduced to the bytes of text it stands for, and two tokens
match when those bytes are equal. A string that several tokens of one vocabulary reduce to (a
WordPiece word start and its '##' continuation) is ambiguous and left unmatched. Special tokens
match by role, not by spelling: EOS with EOS, BOS with BOS ("the document ends" is one event).

Built once from the two vocabularies (a few hundred ms for 100k-token vocabularies); GOLD
(``distill.losses.cross_vocab``) compares the two models exactly on the matched tokens and the
top-1 agreement metric (``distill.eval.bytes``) maps the teacher's choice into the student's.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from distill.align.within import WithinClasses, within_classes

BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte fallback


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (stand-in -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def spelling(tokenizer) -> str:
    """How the vocabulary spells text: 'byte_level', 'metaspace', 'wordpiece' or 'plain'."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    around = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder"), spec.get("normalizer")])
    if '"ByteLevel"' in around:
        return "byte_level"
    if model.get("type") == "WordPiece":
        return "wordpiece"
    if "\u2581" in around or "Metaspace" in around or model.get("byte_fallback"):
        return "metaspace"
    return "plain"


def token_text(token: str, kind: str) -> bytes | None:
    """The bytes of text one vocabulary entry stands for (None when it cannot be read)."""
    if kind == "byte_level":
        table = byte_level_alphabet()
        return bytes(table[c] for c in token) if all(c in table for c in token) else token.encode()
    if kind == "metaspace":
        piece = BYTE_PIECE.match(token)
        return bytes([int(piece.group(1), 16)]) if piece else token.replace("\u2581", " ").encode()
    if kind == "wordpiece" and token.startswith("##"):
        return token[2:].encode()
    return token.encode()


def vocabulary_text(tokenizer) -> dict[bytes, list[int]]:
    """Text bytes -> the ids of the ordinary (non-special) tokens that stand for them.

    A byte-fallback piece ('<0x61>') counts only for a byte no ordinary token spells: the
    tokenizer emits it only then, so it is no rival to the ordinary 'a'."""
    kind, special = spelling(tokenizer), set(tokenizer.all_special_ids)
    table: dict[bytes, list[int]] = {}
    pieces = []
    for token, i in tokenizer.get_vocab().items():
        if kind == "metaspace" and BYTE_PIECE.match(token):
            pieces.append((token, i))
            continue
        text = None if i in special else token_text(token, kind)
        if text:
            table.setdefault(text, []).append(i)
    for token, i in pieces:
        table.setdefault(token_text(token, kind), [i])
    return table


def space_flags(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """([V] bool, [V] bool): the tokens whose text begins with a space, and those whose text ends in
    whitespace, however the vocabulary spells them (special tokens: neither). What ALM's word chunks
    read (``distill.losses.likelihood.word_chunks``)."""
    kind, special = spelling(tokenizer), set(tokenizer.all_special_ids)
    starts, ends_white = np.zeros(_size(tokenizer), bool), np.zeros(_size(tokenizer), bool)
    for token, i in tokenizer.get_vocab().items():
        text = None if i in special else token_text(token, kind)
        if text:
            starts[i], ends_white[i] = text[:1] == b" ", text[-1:] in (b" ", b"\t", b"\n", b"\r")
    return starts, ends_white


@dataclass(frozen=True)
class VocabMapping:
    """Matched pairs (teacher id, student id), one-to-one, and what could not be matched."""

    teacher_ids: np.ndarray  # [M] int64
    student_ids: np.ndarray  # [M] int64
    teacher_size: int
    student_size: int
    ambiguous: int  # strings left out: several tokens of one vocabulary stand for them
    # [teacher_size] int64: the student token each teacher token's text begins with, −1 where none
    # (``first_pieces``; the ``projected_kl`` term). None: not asked for, or a mapping written by hand.
    first_piece: np.ndarray | None = None
    # [teacher_size] / [student_size] int64: the class of each token for ``prefix_kl``: the longest string
    # both vocabularies hold that begins its text (``prefix_classes``); ``prefix_count`` = the catch-all class
    teacher_prefix: np.ndarray | None = None
    student_prefix: np.ndarray | None = None
    prefix_count: int = 0
    # where both tokenizers cut (``both_cut``): [7, 7] bool over (class of the character before a boundary,
    # class of the one after it); the class of each teacher token's last character and of each prefix
    # class's first character (CHAR_CLASSES; NO_CLASS for special tokens, EOS/BOS and the catch-all)
    cuts: np.ndarray | None = None
    teacher_last_char: np.ndarray | None = None
    prefix_first_char: np.ndarray | None = None
    # the subclasses inside each prefix class, for loss.prefix_kl.within (``distill.align.within``): split by
    # the teacher's next row (the student's tokens in them), and by the student's (the teacher's tokens in them)
    within: WithinClasses | None = None
    within_student: WithinClasses | None = None

    @property
    def teacher_to_student(self) -> np.ndarray:
        """[teacher_size] int64: each teacher id's student id, −1 where unmatched."""
        out = np.full(self.teacher_size, -1, np.int64)
        out[self.teacher_ids] = self.student_ids
        return out

    def summary(self) -> str:
        return (
            f"{len(self.teacher_ids)} tokens matched by text ({len(self.teacher_ids) / max(1, self.teacher_size):.0%} "
            f"of the teacher's {self.teacher_size}, {len(self.student_ids) / max(1, self.student_size):.0%} of the "
            f"student's {self.student_size}); {self.ambiguous} ambiguous strings left out"
        )


def vocab_mapping(
    teacher_tokenizer, student_tokenizer, projection: bool = False, prefixes: bool = False
) -> VocabMapping:
    """The tokens two vocabularies share (see the module doc), built once per pair of tokenizers;
    with ``projection``, also each teacher token's first student piece (``first_pieces``: only the
    ``projected_kl`` term reads it, and it walks every teacher token)."""
    t_text, s_text = vocabulary_text(teacher_tokenizer), vocabulary_text(student_tokenizer)
    pairs, ambiguous = [], 0
    for text, t_ids in t_text.items():
        s_ids = s_text.get(text)
        if s_ids is None:
            continue
        if len(t_ids) > 1 or len(s_ids) > 1:
            ambiguous += 1
            continue
        pairs.append((t_ids[0], s_ids[0]))
    pairs += _special_pairs(teacher_tokenizer, student_tokenizer)
    t, s = np.asarray(sorted(pairs), np.int64).reshape(-1, 2).T if pairs else (np.zeros(0, np.int64),) * 2
    assert max(Counter(t.tolist()).values(), default=1) == 1 and max(Counter(s.tolist()).values(), default=1) == 1
    sizes = _size(teacher_tokenizer), _size(student_tokenizer)
    first = first_pieces(teacher_tokenizer, student_tokenizer, dict(pairs)) if projection else None
    if not prefixes:
        return VocabMapping(t, s, *sizes, ambiguous, first)
    t_prefix, s_prefix, shared = prefix_classes(teacher_tokenizer, student_tokenizer, (t_text, s_text))
    last = np.full(sizes[0], NO_CLASS, np.int64)  # each teacher token's last character's class
    for text, ids in t_text.items():
        last[ids] = char_class(text[-1])
    first_char = np.array([char_class(text[0]) for text in shared] + [NO_CLASS] * 3, np.int64)
    cuts = both_cut(teacher_tokenizer, student_tokenizer)
    count = len(shared) + 2
    within = (
        within_classes(shared, t_text, s_text, t_prefix, s_prefix),
        within_classes(shared, s_text, t_text, s_prefix, t_prefix),
    )
    return VocabMapping(t, s, *sizes, ambiguous, first, t_prefix, s_prefix, count, cuts, last, first_char, *within)


# The character classes split patterns tell apart (GPT-2's and Llama 3's regexes, SentencePiece's '▁'
# split), each with the character that stands for it in a probe; NO_CLASS: a special token or none.
CHAR_CLASSES = {"letter": "a", "digit": "1", "space": " ", "newline": "\n", "tab": "\t", "punct": "."}
NO_CLASS = len(CHAR_CLASSES)


def char_class(byte: int) -> int:
    """The class of a character from its first (or only) byte; bytes of a multi-byte character count as letters."""
    if byte >= 0x80 or chr(byte).isalpha():
        return 0
    return {**dict.fromkeys(b"0123456789", 1), 32: 2, 10: 3, 13: 3, 9: 4}.get(byte, 5)


def pre_token_cuts(tokenizer, text: str) -> set[int]:
    """Character positions where the tokenizer's normalizer and pre-tokenizer end a piece of ``text``."""
    backend = tokenizer.backend_tokenizer
    normal = backend.normalizer.normalize_str(text) if backend.normalizer else text
    shift = len(normal) - len(text)  # a prepended '▁'
    if backend.pre_tokenizer is None:
        return set()
    return {end - shift for _, (_, end) in backend.pre_tokenizer.pre_tokenize_str(normal)}


def both_cut(teacher_tokenizer, student_tokenizer) -> np.ndarray:
    """[7, 7] bool: whether both tokenizers' splits cut between a character of one class and one of another
    (probed on 'x' + a + b + 'y' with each class's stand-in; NO_CLASS row and column: always).

    Why ``prefix_kl`` reads it: at a boundary both tokenizers share, each model's next-token distribution is
    conditioned on its own tokenizer cutting there. Llama 3's split keeps a newline with the punctuation
    before it, GPT-2's does not; so after ')' GPT-2's model may well go on with a newline, Llama 3's (at a
    cut) may not. Classes that only one tokenizer could cut before are left out of both distributions."""
    cuts = np.ones((NO_CLASS + 1, NO_CLASS + 1), bool)
    stand_in = list(CHAR_CLASSES.values())
    for i, a in enumerate(stand_in):
        for j, b in enumerate(stand_in):
            cuts[i, j] = all(2 in pre_token_cuts(tok, f"x{a}{b}y") for tok in (teacher_tokenizer, student_tokenizer))
    return cuts


def prefix_classes(
    teacher_tokenizer, student_tokenizer, texts: tuple[dict, dict] | None = None
) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """(teacher [Vt], student [Vs], the shared strings): each token's class, the index of the longest
    string of text both vocabularies hold (as a token each) that its text begins with; EOS and BOS are
    classes of their own on both sides (by role: indices S and S + 1, S shared strings), and C = S + 2
    takes a token that begins with none of them and the other special tokens.

    Why: where two tokenizers split the same text differently, one string is not one event (a
    Llama 3-style '.append' is one token, a GPT-2-style split cuts it as '.' + 'append', so that
    teacher's '.' means "'.' then anything" where the student's '.' means "'.' not followed by a
    letter"). Counting every token under the longest shared string it begins with makes both models'
    classes the same event, "the next token's text begins with this string", as far as the shared
    strings go. ``texts``: the two ``vocabulary_text`` tables, where the caller has them already."""
    t_text, s_text = texts or (vocabulary_text(teacher_tokenizer), vocabulary_text(student_tokenizer))
    shared = sorted(set(t_text) & set(s_text))
    index = {text: i for i, text in enumerate(shared)}
    longest = max(map(len, shared), default=0)
    count = len(shared) + 2  # + EOS and BOS
    out = []
    for tokenizer, table in ((teacher_tokenizer, t_text), (student_tokenizer, s_text)):
        classes = np.full(_size(tokenizer), count, np.int64)
        for text, ids in table.items():
            for cut in range(min(len(text), longest), 0, -1):
                if text[:cut] in index:
                    classes[ids] = index[text[:cut]]
                    break
        eos, bos = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "bos_token_id", None)
        if bos is not None and bos != eos:  # one token for both (GPT-2's <|endoftext|>): the EOS class
            classes[bos] = len(shared) + 1
        if eos is not None:
            classes[eos] = len(shared)
        out.append(classes)
    return out[0], out[1], shared


def first_pieces(teacher_tokenizer, student_tokenizer, matched: dict[int, int]) -> np.ndarray:
    """[teacher_size] int64: for each teacher token, the student token its text begins with (−1: none).

    A matched token (same text, or EOS/BOS by role) is its own match. Any other is given the longest
    student vocabulary entry its bytes begin with: greedy longest match, as WordPiece tokenizes. It
    approximates the first piece the student's own tokenizer would cut (BPE's merges may cut a shorter
    one), and unlike running that tokenizer on the text alone it needs no valid UTF-8 (a byte-level
    token may hold part of a character) and is not fooled by a prepended '▁'. Special tokens that no
    role matches stay −1."""
    out = np.full(_size(teacher_tokenizer), -1, np.int64)
    student = {text: min(ids) for text, ids in vocabulary_text(student_tokenizer).items()}
    longest = max(map(len, student), default=0)
    for text, ids in vocabulary_text(teacher_tokenizer).items():
        for cut in range(min(len(text), longest), 0, -1):
            if text[:cut] in student:
                out[ids] = student[text[:cut]]
                break
    for t, s in matched.items():
        out[t] = s
    return out


def _special_pairs(teacher, student) -> list[tuple[int, int]]:
    """EOS with EOS, then BOS with BOS where both exist and neither id is paired yet."""
    pairs, used_t, used_s = [], set(), set()
    for role in ("eos_token_id", "bos_token_id"):
        t, s = getattr(teacher, role, None), getattr(student, role, None)
        if t is not None and s is not None and t not in used_t and s not in used_s:
            pairs.append((int(t), int(s)))
            used_t.add(t)
            used_s.add(s)
    return pairs


def _size(tokenizer) -> int:
    """Rows of the model's distribution the tokenizer can produce (added tokens included)."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
