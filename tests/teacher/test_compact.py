"""The compact teacher-cache format (distill.teacher.compact): its bytes against the spec in the module's
docstring, the round trip's documented error, exact ids at real vocabulary sizes, and a compact cache
written by the real writer read through TeacherCache / CachedTeacher into the training step; old
(fp16) caches still read, unknown versions are refused in one line, a half-written cache resumes."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.student.scratch import build_llama
from distill.teacher import compact
from distill.teacher.cache import CachedTeacher, TeacherCache
from distill.teacher.cache_manifest import FORMAT_VERSIONS, MANIFEST, shard_paths
from tests.teacher.tiny_cache import SEQ, VOCAB, K, live_topk, write_cache


def test_bytes_follow_the_spec():
    """k=4, vocab 300: l = floor(log2(300 / 4)) = 6 low bits, 4 + (299 >> 6) + 1 = 9 high bits."""
    ids = np.array([[70, 3, 299, 64]])  # best first
    values = np.array([[-1.0, -1.4, -2.6, -4.0]], np.float32)  # 0.71 of the mass
    value_rec, index_rec = compact.encode(values, ids, 300)
    assert compact.record_bytes(4, 300) == (5, 5) and compact.low_bits(4, 300) == 6
    # ids ascending 3, 64, 70, 299; their low 6 bits 000011 000000 000110 101011, packed MSB first
    low = [0b00001100, 0b00000001, 0b10101011]
    # high parts 0, 1, 1, 4 at bits 0+0, 1+1, 1+2, 4+3 = 0, 2, 3, 7 of 9
    assert index_rec.tolist() == [[*low, 0b10110001, 0b00000000]]
    # below the top (-1.0), in id order: 0.4, 3.0, 0, 1.6; scale ceil(3.0 / 0.125) = 24 (3 nats);
    # codes round(below / 3 * 15) = 2, 15, 0, 8, two to a byte
    log_mass = np.float16(np.log(np.exp(values).sum()))
    assert value_rec.tolist() == [[*np.array([log_mass], "<f2").view(np.uint8).tolist(), 24, 0x2F, 0x08]]
    lp, back = compact.decode(value_rec, index_rec, 4, 300)
    below = np.array([0.0, 0.4, 1.6, 3.0], np.float32)  # best first: ids 70, 3, 299, 64
    assert back.tolist() == [[70, 3, 299, 64]]
    np.testing.assert_allclose(lp[0], np.float32(log_mass) - below - np.log(np.exp(-below).sum()), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("vocab", [300, 4_096, 50_000, 151_936])
def test_ids_round_trip_exactly(vocab):
    rng = np.random.default_rng(vocab)
    for k in (1, 7, 64):
        ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(40)])
        ids[0] = np.arange(k)  # the lowest ids, one run
        ids[1] = np.arange(vocab - k, vocab)[::-1]  # the highest, best last
        values = -np.sort(rng.exponential(2.0, ids.shape), -1).astype(np.float32)
        value_rec, index_rec = compact.encode(values, ids, vocab)
        assert index_rec.shape[-1] == compact.record_bytes(k, vocab)[1]
        _, back = compact.decode(value_rec, index_rec, k, vocab, np.int32)
        assert back.dtype == np.int32 and np.array_equal(np.sort(back, -1), np.sort(ids, -1))
    assert sum(compact.record_bytes(64, 4_096)) == 99 and sum(compact.record_bytes(64, 151_936)) == 141


def test_round_trip_error_is_within_half_a_step(built):
    """Each value's distance below its token's top is off by at most half a step (scale / 30), the
    top-k mass (so the tail) is float16-exact, and the ids are the same, best first."""
    model, blocks, _ = built
    _, (values, indices) = live_topk(model, blocks["train"][:, :-1])
    values, indices = values.reshape(-1, K).numpy(), indices.reshape(-1, K).numpy()
    lp, ids = compact.decode(*compact.encode(values, indices, VOCAB), K, VOCAB)
    assert (np.diff(lp, axis=-1) <= 0).all()
    by_id, back_by_id = np.argsort(indices, -1), np.argsort(ids, -1)
    assert np.array_equal(np.take_along_axis(indices, by_id, -1), np.take_along_axis(ids, back_by_id, -1))
    below = values[:, :1] - np.take_along_axis(values, by_id, -1)
    below_back = lp[:, :1] - np.take_along_axis(lp, back_by_id, -1)
    scale = np.ceil(below.max(-1, keepdims=True) / compact.SCALE_STEP) * compact.SCALE_STEP
    assert (np.abs(below_back - below) <= scale / (2 * compact.LEVELS) + 1e-5).all()
    mass, mass_back = np.logaddexp.reduce(values, -1), np.logaddexp.reduce(lp, -1)
    np.testing.assert_allclose(mass_back, mass, rtol=2**-10, atol=1e-6)


@pytest.fixture(scope="module")
def compact_cache(built, tmp_path_factory):
    model, blocks, _ = built
    return write_cache(model, blocks, tmp_path_factory.mktemp("compact") / "c", cache_format="compact")


def test_compact_cache_reads_like_the_fp16_one(built, compact_cache):
    _, _, fp16_dir = built
    cache, old = TeacherCache(compact_cache), TeacherCache(fp16_dir)
    m = cache.manifest
    assert (m["format_version"], m["cache_format"], m["compact"]["low_bits"]) == (2, "compact", 5)
    files = sum(p.stat().st_size for p in compact_cache.glob("*/shard-*.npy"))
    assert m["bytes_per_token"] == cache.bytes_per_token == round(files / (46 * SEQ), 3)
    # 15 bytes of records per token, plus the .npy headers of these tiny shards (1 KB over 736 tokens)
    assert sum(compact.record_bytes(K, VOCAB)) == 15 < cache.bytes_per_token < 17 < old.bytes_per_token == 32
    rows = torch.tensor([39, 0, 17, 16, 5])  # three shards, any order
    new, ref = CachedTeacher(cache).outputs(rows), CachedTeacher(old).outputs(rows)
    assert new.logprobs.dtype == torch.float32 and new.indices.dtype == torch.long and new.shape == ref.shape
    assert torch.equal(new.indices.sort(-1).values, ref.indices.sort(-1).values)
    torch.testing.assert_close(new.logprobs, ref.logprobs, atol=0.3, rtol=0)  # half a step of <= 9 nats
    narrow = CachedTeacher(cache, read_top_k=3).outputs(rows)
    assert torch.equal(narrow.indices, new.indices[..., :3])
    assert cache.lookup(torch.tensor([], dtype=torch.long)).shape == (0, SEQ, K)


def test_compact_cache_trains_like_the_fp16_one(built, compact_cache):
    """The same training step (forward KL with the tail bucket + CE) from either cache."""
    _, blocks, fp16_dir = built
    rows = torch.tensor([3, 30, 12])
    x = torch.from_numpy(blocks["train"][rows.numpy()].astype(np.int64))
    losses = []
    for cache_dir in (fp16_dir, compact_cache):
        torch.manual_seed(0)
        student = build_llama(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, max_seq_len=SEQ)
        module = DistillationModule(
            student, Objective({"forward_kl": 1.0, "ce": 0.5}), VOCAB, teacher=CachedTeacher(TeacherCache(cache_dir))
        )
        module.log = module.log_dict = lambda *a, **k: None
        loss = module.training_step((x[:, :-1], x[:, 1:], rows), 0)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)


def test_old_fp16_caches_still_read(built, tmp_path):
    """A manifest from before the compact format (no cache_format key) reads and resumes as fp16."""
    model, blocks, cache_dir = built
    copy = shutil.copytree(cache_dir, tmp_path / "c")
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["cache_format"]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    a, b = TeacherCache(cache_dir).lookup(torch.arange(40)), TeacherCache(copy).lookup(torch.arange(40))
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.indices, b.indices)
    assert manifest["format_version"] == FORMAT_VERSIONS["fp16"] == 1  # what readers before it accept
    write_cache(model, blocks, copy)  # resumes: nothing to write
    assert TeacherCache(copy).cache_format == "fp16"


@pytest.mark.parametrize(
    "version, message",
    [
        (4, r"has format version 4, newer than this distill reads \(1, 2, 3\): update distill, or rebuild"),
        ("2", r"has an unknown format version '2' \(this distill reads 1, 2, 3\): rebuild it with distill-cache"),
        (None, r"has an unknown format version None"),
    ],
)
def test_unknown_or_newer_version_is_refused_in_one_line(compact_cache, tmp_path, version, message):
    copy = shutil.copytree(compact_cache, tmp_path / "c")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format_version"] = version
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DistillError, match=message) as e:
        TeacherCache(copy)
    assert "\n" not in str(e.value)


def test_half_written_compact_cache_resumes(built, compact_cache, tmp_path, caplog):
    model, blocks, _ = built
    copy = shutil.copytree(compact_cache, tmp_path / "c")
    shard_paths(copy, "train", 1)[0].unlink()  # values gone: the shard counts as unfinished
    (copy / "train" / ".shard-00001.values.npy.x.partial").write_bytes(b"crash leftover")
    with pytest.raises(DistillError, match="incomplete: 1 of 4 shards are missing"):
        TeacherCache(copy)
    with caplog.at_level(logging.INFO, logger="distill"):
        write_cache(model, blocks, copy, cache_format="compact")
    assert "3 of 4 shards already written, writing 1 (top-8, compact format" in caplog.text
    assert not list(copy.glob("**/*.partial"))
    a, b = TeacherCache(compact_cache).lookup(torch.arange(40)), TeacherCache(copy).lookup(torch.arange(40))
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.indices, b.indices)
    assert TeacherCache(copy).bytes_per_token == TeacherCache(compact_cache).bytes_per_token
    with pytest.raises(DistillError, match=r"format_version 2 there, 1 now"):
        write_cache(model, blocks, copy)  # the default fp16 format into a compact cache
