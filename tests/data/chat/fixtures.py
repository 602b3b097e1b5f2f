"""A ChatML tokenizer (byte-level BPE trained on a few stdlib files, the template's tokens kept
whole) and multi-turn conversations with system prompts, shared by the chat data tests."""

from __future__ import annotations

import pytest

from distill.data.chat.conversations import Conversation
from distill.data.chat.templates import CHATML, PRESET_SPECIAL_TOKENS
from distill.data.sources import stdlib_documents
from distill.data.tokenizer import load_tokenizer, train_bpe


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("chatml-bpe")
    train_bpe([d.text for d in stdlib_documents(20)], 600, out, special_tokens=PRESET_SPECIAL_TOKENS["chatml"])
    tok = load_tokenizer(out)
    tok.chat_template = CHATML
    return tok


def conv(*turns, first_target: int = 0, id: str = "c") -> Conversation:
    return Conversation(id, tuple({"role": r, "content": c} for r, c in turns), first_target)


# multi-turn, system prompts, whitespace runs, Unicode and emoji, code, an empty assistant turn
CONVERSATIONS = [
    conv(
        ("system", "Be  terse.\n\n"), ("user", "hi"), ("assistant", "hello 😀"), ("user", "again?"), ("assistant", "ok")
    ),
    conv(("user", "Write f."), ("assistant", "def f(x):\n    return x  \n")),
    conv(
        ("system", "You write Python."),
        ("user", "Sort a list ünïcode"),
        ("assistant", "sorted(xs)"),
        ("user", "and reverse"),
        ("assistant", ""),
        ("user", "thanks"),
        ("assistant", "  welcome\t"),
    ),
    conv(("user", "tool?"), ("assistant", "calling"), ("tool", "42"), ("assistant", "The answer is 42.")),
]
