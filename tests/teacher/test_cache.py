"""The offline teacher cache: what it stores equals the live teacher's top-k, lookups across
shards, the compact format, resuming, and the refusals a user can hit."""

from __future__ import annotations

import logging
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.teacher.cache import (
    CachedTeacher,
    TeacherCache,
    bytes_per_token,
    index_dtype_for,
    shard_paths,
    teacher_fingerprint,
)
from tests.teacher.tiny_cache import KEYS, SEQ, K, T, live_topk, random_blocks, tiny_teacher, write_cache


def test_cache_equals_live_teacher_topk(built):
    model, blocks, cache_dir = built
    cache = TeacherCache(cache_dir, expect={"data_key": "d1", "tokenizer_key": "tok1", "seq_len": SEQ})
    for split in ("train", "val"):
        rows = np.arange(len(blocks[split]))
        out = cache.lookup(torch.from_numpy(rows), split)
        lp, (values, indices) = live_topk(model, blocks[split][:, :-1])
        assert out.logprobs.dtype == torch.float32 and out.indices.dtype == torch.long
        assert out.shape == (len(rows), SEQ, K)
        torch.testing.assert_close(out.logprobs, values, rtol=1e-3, atol=1e-3)
        # Same tokens (up to ties): the live log-prob of every cached index equals its cached value.
        torch.testing.assert_close(lp.gather(-1, out.indices), out.logprobs, rtol=1e-3, atol=1e-3)
        assert (out.indices == indices).float().mean() > 0.99
    assert cache.top_k == K and cache.temperature == T and cache.manifest["extra"] == {"teacher_val_ppl": 299.0}


def test_lookup_any_order_across_shards(built):
    _, blocks, cache_dir = built
    cache = TeacherCache(cache_dir)
    full = cache.lookup(torch.arange(40))
    rows = torch.tensor([39, 0, 17, 16, 15, 33, 2, 17, 31, 32])  # 3 shards, shuffled, a duplicate, both edges
    out = CachedTeacher(cache).outputs(rows, device="cpu")
    assert torch.equal(out.logprobs, full.logprobs[rows]) and torch.equal(out.indices, full.indices[rows])
    assert cache.lookup(torch.tensor([], dtype=torch.long)).shape == (0, SEQ, K)
    with pytest.raises(IndexError):
        cache.lookup(torch.tensor([40]))


def test_compact_format(built):
    _, _, cache_dir = built
    cache = TeacherCache(cache_dir)
    m = cache.manifest
    assert m["index_dtype"] == "uint16" and m["value_dtype"] == "float16"
    assert m["splits"] == {"train": {"num_rows": 40, "num_shards": 3}, "val": {"num_rows": 6, "num_shards": 1}}
    values_path, indices_path = shard_paths(cache_dir, "train", 2)
    values, indices = np.load(values_path), np.load(indices_path)
    assert values.dtype == np.float16 and indices.dtype == np.uint16 and values.shape == (8, SEQ, K)
    assert cache.bytes_per_token == K * (2 + 2) == (values.nbytes + indices.nbytes) // (8 * SEQ)
    assert [index_dtype_for(v).name for v in (256, 257, 65_536, 65_537)] == ["uint8", "uint16", "uint16", "int32"]
    assert bytes_per_token(64, 32_000) == 256 and bytes_per_token(64, 151_936) == 384 <= 400  # Llama, Qwen
    assert not list(cache_dir.glob("**/*.partial"))


def test_restart_writes_only_missing_shards(built, tmp_path, caplog):
    model, blocks, cache_dir = built
    copy = shutil.copytree(cache_dir, tmp_path / "c")
    shard_paths(copy, "train", 1)[0].unlink()  # values gone: the shard counts as unfinished
    (copy / "train" / ".shard-00001.values.npy.x.partial").write_bytes(b"crash leftover")
    mtimes = {p: p.stat().st_mtime_ns for p in copy.glob("*/*.npy")}
    with caplog.at_level(logging.INFO, logger="distill"):
        write_cache(model, blocks, copy)
    assert "3 of 4 shards already written, writing 1" in caplog.text
    rewritten = {p for p in copy.glob("*/*.npy") if p.stat().st_mtime_ns != mtimes.get(p)}
    assert rewritten == set(shard_paths(copy, "train", 1))
    assert not list(copy.glob("**/*.partial"))
    a, b = TeacherCache(cache_dir).lookup(torch.arange(40)), TeacherCache(copy).lookup(torch.arange(40))
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.indices, b.indices)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distill"):
        write_cache(model, blocks, copy)  # nothing left to do: no Trainer
    assert "4 of 4 shards already written, writing 0" in caplog.text


def test_writer_refuses_a_different_build(built):
    model, blocks, cache_dir = built
    with pytest.raises(DistillError, match=r"data_key 'd1' there, 'd2' now.*new teacher.cache_dir or delete"):
        write_cache(model, blocks, cache_dir, keys={**KEYS, "data_key": "d2"})
    with pytest.raises(DistillError, match=r"top_k 8 there, 4 now"):
        write_cache(model, blocks, cache_dir, top_k=4)


def test_reader_refusals(built, tmp_path):
    _, _, cache_dir = built
    with pytest.raises(DistillError, match="no teacher cache at .*run distill-cache first"):
        TeacherCache(tmp_path / "nowhere")
    with pytest.raises(DistillError, match=r"different data \(data_key 'd1', expected 'other'\); rebuild"):
        TeacherCache(cache_dir, expect={"data_key": "other"})
    with pytest.raises(DistillError, match="a different tokenizer"):
        TeacherCache(cache_dir, expect={"tokenizer_key": "other"})
    with pytest.raises(DistillError, match="different data .*6 val rows, 64 needed"):
        TeacherCache(cache_dir, expect={"num_rows": {"val": 64}})
    copy = shutil.copytree(cache_dir, tmp_path / "c")
    shard_paths(copy, "val", 0)[1].unlink()
    with pytest.raises(DistillError, match="incomplete: 1 of 4 shards are missing"):
        TeacherCache(copy)
    with pytest.raises(DistillError, match="has no 'test' split"):
        TeacherCache(cache_dir).lookup([0], split="test")


class _Padded(nn.Module):
    """A teacher whose output has rows past the tokenizer, made to win every top-k."""

    def __init__(self, model: nn.Module, extra_rows: int):
        super().__init__()
        self.model, self.extra_rows = model, extra_rows

    def forward(self, input_ids, use_cache=False):
        logits = self.model(input_ids=input_ids).logits
        pad = torch.full((*logits.shape[:-1], self.extra_rows), 1e4, dtype=logits.dtype)
        return SimpleNamespace(logits=torch.cat([logits, pad], dim=-1))


def test_padded_teacher_is_trimmed(tmp_path):
    vocab = 250  # also exercises the uint8 index path
    model, blocks = tiny_teacher(vocab), random_blocks(vocab)
    blocks = {"train": blocks["train"][:8]}
    cache_dir = write_cache(_Padded(model, 6), blocks, tmp_path / "c", vocab_size=vocab)
    cache = TeacherCache(cache_dir)
    out = cache.lookup(torch.arange(8))
    assert cache.manifest["index_dtype"] == "uint8" and cache.bytes_per_token == K * 3
    assert out.indices.max() < vocab
    _, (values, _) = live_topk(model, blocks["train"][:, :-1], vocab)
    torch.testing.assert_close(out.logprobs, values, rtol=1e-3, atol=1e-3)
    with pytest.raises(DistillError, match="teacher predicts 250 tokens but the tokenizer has 300"):
        write_cache(model, blocks, tmp_path / "c2", vocab_size=300)


def test_teacher_fingerprint(tmp_path):
    a, b = tiny_teacher(), tiny_teacher()
    assert teacher_fingerprint(a) == teacher_fingerprint(b)
    with torch.no_grad():
        b.lm_head.weight[0, 0] += 1
    assert teacher_fingerprint(a) != teacher_fingerprint(b)
    a.save_pretrained(tmp_path / "m")
    key = teacher_fingerprint(tmp_path / "m")
    assert key == teacher_fingerprint(str(tmp_path / "m")) and len(key) == 16
    os.remove(next((tmp_path / "m").glob("*.safetensors")))
    assert teacher_fingerprint(tmp_path / "m") != key
