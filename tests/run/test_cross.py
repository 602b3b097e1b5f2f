"""The cross-tokenizer step: which tokenizer the student has, and the objective checked against both."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from distill.data.cross import CrossTokenizerData
from distill.data.datamodule import from_stdlib
from distill.data.prompt_response import PromptResponseDataModule
from distill.data.seqkd import seqkd_datamodule
from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.run.cross import cross_tokenizer_data, own_tokenizer, student_tokenizer_path
from distill.student.scratch import build_llama

SCRATCH = "distill.student.scratch.scratch_student"


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    dm = from_stdlib(max_docs=10, seq_len=48, batch_size=4, vocab_size=400, cache_dir=str(tmp_path_factory.mktemp("c")))
    dm.load_documents()
    dm.use_tokenizer(dm.train_tokenizer())
    dm.setup()
    return dm


def config(tmp_path, **student):
    return OmegaConf.create(
        {
            "student": {"_target_": SCRATCH, **student},
            "seq_kd": {"enabled": False},
            "paths": {"output_dir": str(tmp_path)},
        }
    )


def test_one_tokenizer_of_a_usable_size():
    assert own_tokenizer(vocab_size=1024) == {"tokenizer": None, "vocab_size": 1024, "tokenizer_style": "byte_level"}
    with pytest.raises(DistillError, match="student.tokenizer=<dir> or student.vocab_size=N, not both"):
        own_tokenizer("/a/tokenizer", 1024)
    with pytest.raises(DistillError, match="student.vocab_size must be >= 260"):
        own_tokenizer(vocab_size=100)
    with pytest.raises(
        DistillError, match="tokenizer_style must be one of byte_level, llama3, sentencepiece, got 'wordpiece'"
    ):
        own_tokenizer(vocab_size=1024, tokenizer_style="wordpiece")
    with pytest.raises(DistillError, match="the style of the BPE trained at student.vocab_size=N: give both"):
        own_tokenizer("/a/tokenizer", tokenizer_style="sentencepiece")


def test_the_students_vocabulary_size_trains_its_own_bpe_and_the_teachers_size_is_the_teachers(dm, tmp_path):
    assert student_tokenizer_path(config(tmp_path), dm) is None  # no tokenizer of its own
    same = cross_tokenizer_data(config(tmp_path, vocab_size=400), dm, Objective({"forward_kl": 1.0}))
    assert same is dm  # the BPE the data module trains at that size: the teacher's own, one tokenization
    cross = cross_tokenizer_data(config(tmp_path, vocab_size=600), dm, Objective({"gold": 1.0, "ce": 0.5}))
    assert isinstance(cross, CrossTokenizerData) and len(cross.tokenizer) == 600
    assert (tmp_path / "data_stats.json").exists()


def test_a_sentencepiece_style_student_of_the_teachers_size_is_another_tokenizer(dm, tmp_path):
    """Same size as the teacher's byte-level BPE, another family's style: its own rows, '▁' pieces and
    byte fallback, and what the student reads decodes back to the teacher's text."""
    cfg = config(tmp_path, vocab_size=400, tokenizer_style="sentencepiece")
    cross = cross_tokenizer_data(cfg, dm, Objective({"gold": 1.0, "ce": 0.5}))
    tok = cross.tokenizer
    assert isinstance(cross, CrossTokenizerData) and tok.eos_token == "</s>"
    assert tok.convert_ids_to_tokens(tok("é 日", add_special_tokens=False)["input_ids"])[-3:] == [
        "<0xE6>",
        "<0x97>",
        "<0xA5>",
    ]
    assert any("\u2581" in piece for piece in tok.convert_ids_to_tokens(tok("def f(x): return x")["input_ids"]))
    assert student_tokenizer_path(cfg, dm) != student_tokenizer_path(config(tmp_path, vocab_size=400), dm)


def test_a_llama3_style_student_splits_as_llama_3_and_reads_the_same_text(dm, tmp_path):
    """Byte-level like the teacher's, split by Llama 3's pattern: digits in threes, punctuation with the
    newline after it; another vocabulary of the teacher's size, aligned on the same text."""
    cfg = config(tmp_path, vocab_size=400, tokenizer_style="llama3")
    cross = cross_tokenizer_data(cfg, dm, Objective({"gold": 1.0, "ce": 0.5}))
    tok = cross.tokenizer
    words = [w for w, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x = 12345):\n")]
    assert words == ["x", "Ġ=", "Ġ", "123", "45", "):Ċ"]  # what BPE may merge within (GPT-2's: 'Ġ12345', '):', 'Ċ')
    assert tok.decode(tok("def f(x):\n    return 'é 日'\n")["input_ids"]) == "def f(x):\n    return 'é 日'\n"
    assert tok.get_vocab() != dm.tokenizer.get_vocab() and len(tok) == 400
    assert student_tokenizer_path(cfg, dm) != student_tokenizer_path(config(tmp_path, vocab_size=400), dm)


def test_objectives_that_cannot_compare_the_two_tokenizers_are_refused(dm, tmp_path):
    with pytest.raises(DistillError, match="tokenize alike: loss term 'uld'"):
        cross_tokenizer_data(config(tmp_path), dm, Objective({"uld": 1.0}))
    with pytest.raises(DistillError, match="so loss term 'hidden'"):  # wired at weight 0 still compares positions
        cross_tokenizer_data(config(tmp_path, vocab_size=600), dm, Objective({"gold": 1.0, "hidden": 0.0}))
    rows = object.__new__(PromptResponseDataModule)  # rows with masks: not aligned across tokenizers yet
    rows.tokenizer = dm.tokenizer
    own = student_tokenizer_path(config(tmp_path, vocab_size=600), dm)
    with pytest.raises(DistillError, match="PromptResponseDataModule rows .* are not aligned across tokenizers"):
        cross_tokenizer_data(config(tmp_path, tokenizer=own), rows, Objective({"gold": 1.0}))


def test_sequence_level_kd_gives_the_student_the_teachers_text_in_its_own_tokens(dm, tmp_path):
    teacher = build_llama(len(dm.tokenizer), 32, 1, 2, max_seq_len=64, eos_token_id=dm.tokenizer.eos_token_id)
    seqkd = seqkd_datamodule(dm, teacher, teacher_key="t", prompt_tokens=16, max_examples=8, cache_dir=str(tmp_path))
    cfg = config(tmp_path, vocab_size=600)
    cfg.seq_kd.enabled = True
    cross = cross_tokenizer_data(cfg, seqkd, Objective({"gold": 1.0, "ce": 0.5}))
    texts = [d.text for d in cross.base.train_docs]
    assert len(texts) == 8 and cross.base.val_docs == dm.val_docs  # judged on the corpus, not on answers
    for text, block in zip(texts, dm.train_blocks[:8]):  # each: the corpus prompt, then what the teacher wrote
        prompt = dm.tokenizer.decode(block[:16], skip_special_tokens=True)
        assert text.startswith(prompt) and len(text) > len(prompt)
    assert len(cross.datasets["train"]) == len(cross.base.train_blocks) > 0
