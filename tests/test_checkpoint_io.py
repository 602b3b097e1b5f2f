"""Checkpoints: atomic writes, a full disk keeps the previous file, no pickle unless allowed."""

import errno
import os

import pytest
import torch

from distill.checkpoint_io import AtomicCheckpointIO
from distill.errors import DistillError


def test_save_then_load(tmp_path):
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"w": torch.ones(3), "step": 5}, tmp_path / "last.ckpt")
    loaded = io_.load_checkpoint(tmp_path / "last.ckpt")
    assert loaded["step"] == 5 and torch.equal(loaded["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_out_of_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DistillError, match="disk is full.*previous checkpoint is kept"):
        io_.save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io_.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temp file left


class Payload:  # any class: pickle would import and build it
    pass


def test_pickled_objects_need_allow_pickle(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"obj": Payload()}, path)
    with pytest.raises(DistillError, match="allow_pickle=true"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert isinstance(AtomicCheckpointIO(allow_pickle=True).load_checkpoint(path)["obj"], Payload)


def test_corrupt_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(DistillError, match="cannot read checkpoint"):
        AtomicCheckpointIO().load_checkpoint(path)
