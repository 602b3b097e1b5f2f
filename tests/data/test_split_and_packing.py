"""Split by document, tokenize + pack into blocks, and the DataModule that ties them together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import datamodule as datamodule_mod
from distill.data.datamodule import BlockDataset, TextDataModule, from_stdlib
from distill.data.packing import pack, tokenize
from distill.data.sources import Document, stdlib_documents
from distill.data.split import split_documents
from distill.data.tokenizer import EOS, load_tokenizer, train_bpe
from distill.errors import DistillError

DOCS = [Document(f"doc{i:03d}", f"text of document {i}\n" * (i % 5 + 1)) for i in range(50)]


# -- split --------------------------------------------------------------------------------------------------


def test_split_is_by_document_and_complete():
    train, val = split_documents(DOCS, 0.2, seed=0)
    train_ids, val_ids = {d.id for d in train}, {d.id for d in val}
    assert not train_ids & val_ids
    assert train_ids | val_ids == {d.id for d in DOCS}
    assert len(val) == 10 and len(train) == 40


def test_split_is_deterministic_for_a_seed_and_varies_with_it():
    a = split_documents(DOCS, 0.2, seed=1)
    b = split_documents(list(reversed(DOCS)), 0.2, seed=1)  # input order does not matter
    assert [d.id for d in a[1]] == [d.id for d in b[1]]
    assert [d.id for d in a[0]] == [d.id for d in b[0]]
    c = split_documents(DOCS, 0.2, seed=2)
    assert {d.id for d in a[1]} != {d.id for d in c[1]}


def test_split_keeps_at_least_one_document_on_each_side():
    train, val = split_documents(DOCS[:2], 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
    train, val = split_documents(DOCS[:3], 0.99, seed=0)
    assert len(train) == 1 and len(val) == 2


@pytest.mark.parametrize("n", [0, 1])
def test_split_needs_two_documents(n):
    with pytest.raises(DistillError, match="at least 2"):
        split_documents(DOCS[:n], 0.1, seed=0)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(DistillError, match="val_fraction"):
        split_documents(DOCS, fraction, seed=0)


# -- tokenize / pack ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_bpe([d.text for d in stdlib_documents(max_docs=10)], 320, out)
    return load_tokenizer(out)


def test_trained_tokenizer(tokenizer):
    assert tokenizer.eos_token == EOS and tokenizer.eos_token_id is not None
    assert len(tokenizer) <= 320
    text = "def main():\n    return 'héllo'\n"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text  # byte-level round trip


def test_tokenize_puts_eos_after_every_document(tokenizer):
    texts = ["import os\n", "x = 1", "print(x)\n"]
    ids = tokenize(texts, tokenizer, batch_size=2)  # more than one batch
    eos = tokenizer.eos_token_id
    assert ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer)
    positions = np.flatnonzero(ids == eos)
    assert len(positions) == len(texts) and positions[-1] == len(ids) - 1
    starts = [0, *(positions[:-1] + 1)]
    pieces = [tokenizer.decode(ids[s:e].tolist()) for s, e in zip(starts, positions)]
    assert pieces == texts


def test_pack_shape_and_tail_dropped():
    tokens = np.arange(105, dtype=np.int32)
    blocks = pack(tokens, seq_len=9)
    assert blocks.shape == (10, 10)
    assert (blocks.ravel() == np.arange(100)).all()  # contiguous, in order; tokens 100..104 dropped
    assert pack(np.arange(9), seq_len=9).shape == (0, 10)


def test_block_dataset_shifts_targets():
    ds = BlockDataset(np.arange(20, dtype=np.int32).reshape(2, 10))
    assert len(ds) == 2
    inputs, targets, index = ds[1]
    assert index == 1
    assert inputs.dtype == torch.int64
    assert inputs.tolist() == list(range(10, 19)) and targets.tolist() == list(range(11, 20))


# -- TextDataModule end to end ------------------------------------------------------------------------------

SMALL = dict(max_docs=30, vocab_size=300, seq_len=32, batch_size=4, val_fraction=0.1, seed=0, max_val_blocks=5)


@pytest.fixture(scope="module")
def dm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dm-cache")


@pytest.fixture(scope="module")
def prepared(dm_cache):
    dm = from_stdlib(cache_dir=str(dm_cache), **SMALL)
    dm.load_documents()
    tok_dir = dm.train_tokenizer()
    dm.use_tokenizer(tok_dir)
    dm.setup("fit")
    return dm, tok_dir


def test_datamodule_split_and_tokenizer(prepared, dm_cache):
    dm, tok_dir = prepared
    assert not {d.id for d in dm.train_docs} & {d.id for d in dm.val_docs}
    assert len(dm.train_docs) + len(dm.val_docs) == len(stdlib_documents(30))
    assert Path(tok_dir).parent == dm_cache / "tokenizers"
    assert len(dm.tokenizer) <= SMALL["vocab_size"] and dm.tokenizer.eos_token == EOS


def test_train_tokenizer_is_cached(prepared, dm_cache, monkeypatch):
    _, tok_dir = prepared
    mtime = (Path(tok_dir) / "tokenizer.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again instead of read from the cache")

    monkeypatch.setattr(datamodule_mod, "train_bpe", no_training)
    dm = from_stdlib(cache_dir=str(dm_cache), **SMALL)  # a fresh module, as a second run would build
    dm.load_documents()
    again = dm.train_tokenizer()  # no_training above fails the test if BPE runs again
    assert again == tok_dir
    assert (Path(tok_dir) / "tokenizer.json").stat().st_mtime_ns == mtime
    assert len(list((dm_cache / "tokenizers").iterdir())) == 1


def test_tokenizer_cache_key_depends_on_vocab_size(prepared, dm_cache):
    _, tok_dir = prepared
    dm = from_stdlib(cache_dir=str(dm_cache), **{**SMALL, "vocab_size": 280})
    dm.load_documents()
    other = dm.train_tokenizer()
    assert other != tok_dir and len(load_tokenizer(other)) <= 280


def test_batches_are_shifted_blocks(prepared):
    dm, _ = prepared
    assert dm.train_blocks.shape[1] == SMALL["seq_len"] + 1
    assert 1 <= len(dm.val_blocks) <= SMALL["max_val_blocks"]
    assert dm.tokens_per_batch == SMALL["batch_size"] * SMALL["seq_len"]
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == len(dm.train_blocks) // SMALL["batch_size"]  # drop_last
    for inputs, targets, _rows in train_batches[:3] + list(dm.val_dataloader()):
        assert inputs.shape == targets.shape and inputs.shape[1] == SMALL["seq_len"]
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert int(torch.cat([inputs, targets]).max()) < len(dm.tokenizer)
    inputs, _, rows = train_batches[0]
    assert torch.equal(
        inputs, torch.from_numpy(dm.train_blocks[rows.numpy(), :-1]).long()
    )  # rows index the packed array
    assert inputs.shape[0] == SMALL["batch_size"]
    # the EOS separator appears in the packed stream (30 documents, several per block at most)
    assert (dm.train_blocks == dm.tokenizer.eos_token_id).sum() >= 1


def test_train_loader_is_seeded(prepared):
    dm, _ = prepared
    first = next(iter(dm.train_dataloader()))[0]
    assert torch.equal(first, next(iter(dm.train_dataloader()))[0])


def test_setup_reuses_the_packed_cache(prepared, dm_cache):
    dm, tok_dir = prepared
    packed = list((dm_cache / "packed").iterdir())
    fresh = from_stdlib(cache_dir=str(dm_cache), **SMALL)
    fresh.load_documents()
    fresh.use_tokenizer(fresh.train_tokenizer())
    fresh.setup("fit")
    assert list((dm_cache / "packed").iterdir()) == packed
    assert np.array_equal(fresh.train_blocks, dm.train_blocks)
    assert np.array_equal(fresh.val_blocks, dm.val_blocks)


def test_too_small_corpus(tmp_path):
    docs = [Document("a", "x = 1\n"), Document("b", "y = 2\n"), Document("c", "z = 3\n")]
    dm = TextDataModule(source=lambda: docs, seq_len=64, batch_size=2, vocab_size=270, cache_dir=str(tmp_path))
    dm.load_documents()
    dm.use_tokenizer(dm.train_tokenizer())
    with pytest.raises(DistillError, match="corpus is too small"):
        dm.setup("fit")


def test_empty_corpus(tmp_path):
    dm = TextDataModule(source=lambda: [], cache_dir=str(tmp_path))
    with pytest.raises(DistillError, match="corpus is empty"):
        dm.load_documents()


@pytest.mark.parametrize("seq_len, batch_size", [(1, 4), (32, 0)])
def test_bad_sizes(seq_len, batch_size, tmp_path):
    with pytest.raises(DistillError, match="seq_len"):
        TextDataModule(source=lambda: DOCS, seq_len=seq_len, batch_size=batch_size, cache_dir=str(tmp_path))
