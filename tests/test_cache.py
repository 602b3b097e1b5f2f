"""Atomic writes and the clean-up of what killed writers leave behind."""

import os
import socket
import subprocess
import sys

from distill.cache import cached_dir, clean_leftovers, partial_name, write_atomic


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_write_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "metrics.json"
    write_atomic(path, "{}\n")
    write_atomic(path, b'{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n' and os.listdir(tmp_path) == ["metrics.json"]


def test_leftovers_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f"metrics.json.partial-{host}-{_dead_pid()}"
    dead.write_text("half")
    dead_dir = tmp_path / "checkpoints" / f"student.partial-{host}-{_dead_pid()}"
    dead_dir.mkdir(parents=True)
    live = partial_name(tmp_path / "last.ckpt")  # this process: still writing
    live.write_text("in flight")
    other_host = tmp_path / f"x.partial-elsewhere-{_dead_pid()}"  # maybe alive on another node
    other_host.write_text("?")
    removed = clean_leftovers(tmp_path)
    assert set(removed) == {dead, dead_dir}
    assert live.exists() and other_host.exists() and not dead.exists() and not dead_dir.exists()


def test_cached_dir_cleans_a_killed_build(tmp_path):
    kind = tmp_path / "teachers"
    stale = kind / f".abc.partial-{socket.gethostname()}-{_dead_pid()}.xyz"
    stale.mkdir(parents=True)
    path = cached_dir(tmp_path, "teachers", "abc", lambda tmp: (tmp / "done").write_text("ok"))
    assert (path / "done").read_text() == "ok"
    assert sorted(os.listdir(kind)) == ["abc"]
