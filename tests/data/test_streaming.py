"""data.streaming: the training documents are never held; split by id hash, packed to a memory map."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.data.datamodule import BlockDataset, DocStream, from_files
from distill.data.filters.code import code_stage
from distill.data.packing import pack, pack_to_npy, tokenize
from distill.data.split import in_validation
from distill.data.tokenizer import load_tokenizer, train_bpe

TEXTS = [f"def f{i}():\n    return {i} * {i}\n" * (i % 7 + 1) for i in range(300)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_bpe(TEXTS, 300, out)
    return load_tokenizer(out)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_streaming_pack_equals_the_in_memory_pack(tokenizer, tmp_path, batch_size):
    n = pack_to_npy(iter(TEXTS), tokenizer, 16, tmp_path / "train.npy", batch_size=batch_size)
    expected = pack(tokenize(TEXTS, tokenizer), 16)
    got = np.load(tmp_path / "train.npy", mmap_mode="r")
    assert n == len(expected) > 10
    assert np.array_equal(got, expected)
    assert not (tmp_path / "train.raw").exists()


def test_hash_split_is_seeded_and_near_its_fraction():
    ids = [f"doc{i}" for i in range(4000)]
    val = [i for i in ids if in_validation(i, 0.1, seed=0)]
    assert 0.08 < len(val) / len(ids) < 0.12
    assert val == [i for i in ids if in_validation(i, 0.1, seed=0)]
    assert val != [i for i in ids if in_validation(i, 0.1, seed=1)]


def write_jsonl(path, texts, bad_lines=0):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "n": i}) + "\n")
        for _ in range(bad_lines):
            f.write("{not json\n")
    return path


def test_streaming_datamodule_never_holds_the_training_documents(tmp_path):
    data = write_jsonl(tmp_path / "corpus.jsonl", TEXTS, bad_lines=2)
    dm = from_files(
        [str(data)],
        streaming=True,
        seq_len=16,
        batch_size=4,
        val_fraction=0.1,
        vocab_size=300,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.load_documents()
    assert isinstance(dm.train_docs, DocStream)
    train_ids = [d.id for d in dm.train_docs]
    assert [d.id for d in dm.train_docs] == train_ids  # re-readable, same order
    val_ids = {d.id for d in dm.val_docs}
    assert not set(train_ids) & val_ids and len(train_ids) + len(val_ids) == len(TEXTS)
    assert sum(dm.skips.values()) == 2  # the bad lines, counted once however often the source is re-read
    dm.use_tokenizer(dm.train_tokenizer())
    dm.setup("fit")
    assert isinstance(dm.train_blocks, np.memmap)
    assert BlockDataset(dm.train_blocks).lazy
    x, y, i = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16) and (x[:, 1:] == y[:, :-1]).all()
    train_texts = [d.text for d in dm.train_docs]
    assert np.array_equal(dm.train_blocks, pack(tokenize(train_texts, dm.tokenizer), 16))


def test_streaming_filters_keep_a_stream(tmp_path):
    long_line = "x = [" + ", ".join(map(str, range(400))) + "]\n"
    data = write_jsonl(tmp_path / "corpus.jsonl", TEXTS + [long_line] * 20)
    dm = from_files(
        [str(data)],
        streaming=True,
        seq_len=16,
        batch_size=4,
        val_fraction=0.1,
        vocab_size=300,
        cache_dir=str(tmp_path / "cache"),
        filters={"code": code_stage(max_line_length=1000)},
        filter_tasks=2,
        filter_workers=1,
    )
    dm.load_documents()
    dm.use_tokenizer(dm.train_tokenizer())
    stats = dm.apply_filters()
    assert isinstance(dm.train_docs, DocStream)
    kept = [d.text for d in dm.train_docs]
    assert stats["kept"] == len(kept) and long_line not in kept
    assert stats["stages"]["code"]["dropped"]["max_line_length"] == stats["input"] - stats["kept"] > 0
    dm.setup("fit")
    assert np.array_equal(dm.train_blocks, pack(tokenize(kept, dm.tokenizer), 16))
