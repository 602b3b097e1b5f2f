"""Sequence-level KD from prompts: the teacher answers each training prompt once; the answers are
cached in chunks (an interrupted run resumes at the last finished chunk) and are the only targets."""

import shutil
from collections import Counter

import numpy as np
import pytest

from distill.data.chat.datamodule import ChatDataModule
from distill.data.chat.seqkd import chat_seqkd_datamodule
from tests.data.chat.fixtures import CONVERSATIONS
from tests.data.chat.test_rows import tiny_llama


@pytest.fixture
def dm(chat_tokenizer, tmp_path):
    chat_tokenizer.save_pretrained(tmp_path / "tok")
    convs = [c for _ in range(5) for c in CONVERSATIONS]  # 4 prompts, each asked 5 times: one lands in validation
    dm = ChatDataModule(
        source=lambda: (convs, Counter()), chat_template="chatml", seq_len=96, batch_size=2, val_fraction=0.25,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    dm.load_documents()
    dm.use_tokenizer(tmp_path / "tok")
    dm.setup()
    return dm


class CountingModel:
    """A tiny Llama that counts its generate calls."""

    def __init__(self, vocab):
        self.model, self.calls = tiny_llama(0, vocab), 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kwargs):
        self.calls += 1
        return self.model.generate(**kwargs)


def answers(dm, model, tmp_path):
    return chat_seqkd_datamodule(
        dm, model, teacher_key="t", new_tokens=6, temperature=0.0, seed=0, batch_size=4, max_examples=None,
        cache_dir=tmp_path / "seqkd", device="cpu", chunk_rows=5,
    )  # fmt: skip


def test_answers_follow_the_real_prompts_and_are_the_only_targets(dm, tmp_path):
    model = CountingModel(len(dm.tokenizer))
    out = answers(dm, model, tmp_path)
    lens = dm.train_extras["prompt_len"]
    assert out.train_blocks.shape == dm.train_blocks.shape and model.calls > 0
    for row, targets, base, n in zip(out.train_blocks, out.train_targets, dm.train_blocks, lens):
        assert (row[:n] == base[:n]).all()  # the prompt as the data has it
        written = np.flatnonzero(targets != -100)
        assert written[0] == n - 1 and 1 <= len(written) <= 6  # the teacher's answer, nothing else
        assert (targets[written] == row[written + 1]).all()
    assert out.val_dataloader().dataset.blocks.shape[0] == len(dm.val_blocks)  # validation: the real conversations


def test_a_rerun_reads_the_chunks_and_resumes_a_missing_one(dm, tmp_path):
    first = answers(dm, CountingModel(len(dm.tokenizer)), tmp_path)
    again = CountingModel(len(dm.tokenizer))
    second = answers(dm, again, tmp_path)
    assert again.calls == 0 and (second.train_blocks == first.train_blocks).all()
    chunks = sorted((tmp_path / "seqkd" / "seqkd").iterdir())
    assert len(chunks) == -(-len(dm.train_blocks) // 5)
    shutil.rmtree(chunks[1])  # as if the run had stopped inside the second chunk
    third = answers(dm, again, tmp_path)
    assert again.calls == 2 and (third.train_blocks == first.train_blocks).all()  # one chunk: 5 rows in 2 batches
