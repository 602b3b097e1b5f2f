"""Fixtures of the CLI tests."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from distill.data.sources import stdlib_documents
from distill.data.tokenizer import train_bpe
from tests.cli.helpers import round_up


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    """Two tokenizers (different training text), one JSONL data file with the text under ``content``."""
    root = tmp_path_factory.mktemp("byo")
    docs = stdlib_documents(max_docs=60)
    tok_a, tok_b = root / "tok_a", root / "tok_b"
    train_bpe([d.text for d in docs[:20]][:8], 300, tok_a)  # a few tens of KB of Python
    train_bpe(["the quick brown fox jumps over the lazy dog. " * 50, "lorem ipsum dolor sit amet " * 50], 290, tok_b)
    n = len(AutoTokenizer.from_pretrained(tok_a))
    assert round_up(n) > n, "the teacher's embedding must have padding rows for these tests"

    data = root / "data.jsonl"
    records = []
    for d in docs[20:]:
        for start in range(0, min(len(d.text), 6000), 1500):
            records.append({"content": d.text[start : start + 1500], "id": d.id})
    data.write_text("".join(json.dumps(r) + "\n" for r in records[:60]))
    return {"root": root, "tok_a": tok_a, "tok_b": tok_b, "data": data}
