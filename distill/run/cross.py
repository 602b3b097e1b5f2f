"""The cross-tokenizer step: a student with its own tokenizer gets its own rows of the teacher's text.

``student.tokenizer=<dir>`` (a fast tokenizer), ``student.vocab_size=N`` (a BPE trained on the
training split, cached; ``student.tokenizer_style``: byte-level split as GPT-2 or as Llama 3, or SentencePiece-style) or a ``student=pretrained`` whose directory holds another tokenizer:
then the run trains on ``distill.data.cross.CrossTokenizerData`` and distills with the objectives
across vocabularies (``loss=uld``, ``loss=gold``). A same-vocabulary term between two tokenizers,
or a cross-vocabulary term between two alike, is refused in one line (``distill.align.checks``).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from distill.align.checks import check_objective, same_tokenization
from distill.cache import cached_dir, fingerprint
from distill.data.cross import CrossTokenizerData
from distill.data.datamodule import TextDataModule
from distill.data.seqkd_text import seqkd_as_text
from distill.data.tokenizer import STYLES, load_tokenizer, train_bpe, train_llama3_bpe, train_sentencepiece_bpe
from distill.errors import DistillError
from distill.losses.objective import Objective
from distill.losses.terms import TERMS
from distill.run.cross_teachers import STUDENT, TEACHER, check_terms, member_tokenizers, teacher_reads, view_specs
from distill.run.data import write_data_stats
from distill.teacher.source import SEVERAL

log = logging.getLogger(__name__)

PRETRAINED = "distill.student.pretrained."


def own_tokenizer(
    tokenizer: str | None = None, vocab_size: int | None = None, tokenizer_style: str = "byte_level"
) -> dict:
    """``student.tokenizer`` / ``student.vocab_size`` (+ ``student.tokenizer_style``): the student's own
    tokenizer, read by the run and taken out of ``student`` before its builder is called (the config
    check reads these arguments)."""
    if tokenizer is not None and vocab_size is not None:
        raise DistillError("give the student one tokenizer: student.tokenizer=<dir> or student.vocab_size=N, not both")
    if vocab_size is not None and vocab_size < 260:  # the 256 byte symbols, EOS and a few merges
        raise DistillError(f"student.vocab_size must be >= 260 (a byte-level BPE's alphabet), got {vocab_size}")
    if tokenizer_style not in STYLES:
        raise DistillError(f"student.tokenizer_style must be one of {', '.join(STYLES)}, got {tokenizer_style!r}")
    if tokenizer_style != "byte_level" and vocab_size is None:
        raise DistillError("student.tokenizer_style is the style of the BPE trained at student.vocab_size=N: give both")
    return {"tokenizer": tokenizer, "vocab_size": vocab_size, "tokenizer_style": tokenizer_style}


# the BPE trainers and the cache keys of their tokenizers ("bpe-v1": the key data modules train theirs under,
# so the teacher's size and style give back the teacher's own tokenizer)
TRAINERS = {
    "byte_level": ("bpe-v1", train_bpe),
    "llama3": ("llama3-bpe-v1", train_llama3_bpe),
    "sentencepiece": ("sp-bpe-v1", train_sentencepiece_bpe),
}


def student_tokenizer_path(cfg: DictConfig, dm) -> str | None:
    """Where the student's tokenizer is, if it names one of its own (else it shares the teacher's)."""
    s = cfg.student
    spec = own_tokenizer(s.get("tokenizer"), s.get("vocab_size"), s.get("tokenizer_style") or "byte_level")
    if spec["tokenizer"]:
        return spec["tokenizer"]
    if spec["vocab_size"]:
        size = spec["vocab_size"]
        version, train = TRAINERS[spec["tokenizer_style"]]
        key = fingerprint(version, dm.data_key, size)
        texts = (d.text for d in dm.train_docs)
        return str(cached_dir(dm.cache_dir, "tokenizers", key, lambda tmp: train(texts, size, tmp)))
    if str(cfg.student.get("_target_", "")).startswith(PRETRAINED):
        return cfg.student.path
    return None


def cross_tokenizer_data(cfg: DictConfig, dm, loss: Objective, teacher=None):
    """``dm`` itself when the student shares the teacher's tokenizer, else the student's aligned rows
    of it; either way the objective is checked against the two tokenizers first. Several teachers
    (``teacher``: their source) whose tokenizers differ get a view each (``distill.run.cross_teachers``)."""
    path = student_tokenizer_path(cfg, getattr(dm, "base", dm))  # a BPE of its own: on the corpus, not on answers
    try:
        student_tok = load_tokenizer(path) if path else dm.tokenizer
    except (OSError, ValueError) as e:
        raise DistillError(f"student tokenizer at {path}: {' '.join(str(e).split())[:200]}") from None
    members = member_tokenizers(teacher, dm.tokenizer) if teacher is not None and teacher.kind == SEVERAL else None
    reads, views = teacher_reads(members, dm.tokenizer, student_tok) if members else (None, [])
    if reads is not None and len(set(reads)) > 1 or views:
        check_several(cfg, loss, teacher, reads)
    else:
        check_objective([t for t in TERMS if loss.wired(t)], dm.tokenizer, student_tok)
    shared = same_tokenization(dm.tokenizer, student_tok)
    if shared and not views:
        return dm
    if type(getattr(dm, "base", dm)) is not TextDataModule:  # rows with masks: prompts, conversations
        raise DistillError(
            f"a student with its own tokenizer trains on plain text (data=stdlib or data=files); "
            f"{type(getattr(dm, 'base', dm)).__name__} rows (prompt/response, conversations) are not aligned "
            "across tokenizers yet: give the student the teacher's tokenizer"
        )
    if cfg.seq_kd.enabled:
        dm = seqkd_as_text(dm)  # the teacher's continuations as text: the student reads them in its tokens
    student_key = fingerprint(sorted(student_tok.get_vocab().items()))
    cross = CrossTokenizerData(dm, None if shared else student_tok, student_key, view_specs(views))
    cross.setup("fit")
    write_data_stats(cfg, cross)  # what the alignment distils and leaves out, in the run dir
    if reads is not None:
        own = {TEACHER: dm.tokenizer, STUDENT: student_tok}
        feeds = [own.get(r) if r in own else views[r] for r in reads]
        teacher.scorer.read_feeds(reads, [len(t) for t in feeds])
        loss.bind_vocabularies(dm.tokenizer, student_tok, members=feeds)
        log.info(
            "teachers read: %s (views: %d)", ", ".join(f"teachers[{i}] {r}" for i, r in enumerate(reads)), len(views)
        )
    else:
        loss.bind_vocabularies(dm.tokenizer, student_tok)
    log.info(
        "cross-tokenizer: teacher vocabulary %d, student %d (%s); student rows of %d tokens",
        len(dm.tokenizer),
        len(student_tok),
        path,
        cross.student_len,
    )
    return cross


def check_several(cfg: DictConfig, loss: Objective, teacher, reads: list) -> None:
    """Teachers on different rows: each compared with the student on its own (``teachers_mix=sum``)."""
    if cfg.get("teachers_mix", "mixture") == "mixture":
        raise DistillError(
            "teachers_mix=mixture mixes distributions over one vocabulary, but these teachers read different "
            f"tokenizers' rows ({reads}): use teachers_mix=sum (each teacher aligned with the student on its own)"
        )
    check_terms([t for t in TERMS if loss.wired(t)], reads, teacher.paired, loss.on_policy.lmbda > 0)
