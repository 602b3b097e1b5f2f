"""Fixtures of the teacher tests."""

import pytest

from tests.teacher.tiny_cache import random_blocks, tiny_teacher, write_cache


@pytest.fixture(scope="package")
def built(tmp_path_factory):
    """A tiny teacher, its blocks and its top-k cache, written once: tests only read it (or copy it to change it)."""
    model, blocks = tiny_teacher(), random_blocks()
    cache_dir = write_cache(model, blocks, tmp_path_factory.mktemp("tcache") / "c", extra={"teacher_val_ppl": 299.0})
    return model, blocks, cache_dir
