"""Several teachers of different tokenizers (``teachers=[...]``), each aligned with the student on its own.

The rows are the first teacher's packing (what its cache and the student pruned from it read). Each
teacher then reads one of three kinds of rows (``MixtureTeacher.read_feeds``):

- ``"student"``: it shares the student's tokenizer, reads the student's rows and is compared with the
  same-vocabulary terms (``forward_kl``, ...; hidden states too, position by position);
- ``"teacher"``: it shares the first teacher's tokenizer (the student has another), reads the first
  teacher's rows and is compared with the cross-vocabulary terms (``gold``, ``prefix_kl``, ``uld``, ``projected_kl``) on
  their alignment with the student's;
- ``j``: a tokenizer of its own, read as view ``j`` of the same text (``distill.data.cross``), compared
  like ``"teacher"`` on its own alignment and vocabulary mapping.

Teachers on different rows are compared each on its own (``teachers_mix=sum``): a mixture of
distributions needs one vocabulary. Only a live teacher can read a view: a cache holds the rows of the
first teacher's packing, and one written with another tokenizer is refused when it is opened.
"""

from __future__ import annotations

from distill.align.checks import CROSS_VOCAB_TERMS, same_tokenization
from distill.cache import fingerprint
from distill.data.tokenizer import load_tokenizer
from distill.errors import DistillError
from distill.losses.terms import DIVERGENCES, REGISTRY, REPRESENTATION

STUDENT, TEACHER = "student", "teacher"


def member_tokenizers(source, tokenizer) -> list:
    """Each teacher's tokenizer: a live teacher's own directory's, else ``tokenizer`` (the first
    teacher's: a from-scratch teacher is trained on it, a cache was written with it)."""
    out = []
    for member in source.members:
        out.append(load_tokenizer(member.path) if member.live and member.path else tokenizer)
    return out


def teacher_reads(tokenizers: list, teacher_tokenizer, student_tokenizer) -> tuple[list, list]:
    """(what rows each teacher reads, the tokenizers that need a view of their own), in first-seen order."""
    reads, views = [], []
    for tokenizer in tokenizers:
        if same_tokenization(tokenizer, student_tokenizer):
            reads.append(STUDENT)
        elif same_tokenization(tokenizer, teacher_tokenizer):
            reads.append(TEACHER)
        else:
            j = next((j for j, v in enumerate(views) if same_tokenization(v, tokenizer)), None)
            if j is None:
                views.append(tokenizer)
                j = len(views) - 1
            reads.append(j)
    return reads, views


def check_terms(terms: list[str], reads: list, paired: int, on_policy: bool) -> None:
    """Each teacher must have a term that can compare it with the student, on its rows; one line otherwise."""
    exact = [t for t in terms if t in DIVERGENCES]
    cross = [t for t in terms if t in CROSS_VOCAB_TERMS]
    representation = [t for t in terms if REGISTRY[t].compares == REPRESENTATION]
    for i, read in enumerate(reads):
        if read == STUDENT and not exact:
            raise DistillError(
                f"teachers[{i}] shares the student's tokenizer, but no loss term compares one vocabulary "
                f"({', '.join(terms)}): add loss.weights.forward_kl=1"
            )
        if read != STUDENT and not cross:
            raise DistillError(
                f"teachers[{i}] tokenizes differently from the student, but no loss term compares two vocabularies "
                f"({', '.join(terms)}): add loss.weights.gold=1 (or prefix_kl, uld, projected_kl)"
            )
    if representation and reads[paired] != STUDENT:
        raise DistillError(
            f"loss.weights.{representation[0]} pairs positions one to one, but teachers[{paired}] (the one it pairs "
            "with) tokenizes differently from the student: name a teacher of the student's tokenizer with "
            f"loss.{representation[0]}.teacher=<name or index>"
        )
    if on_policy and any(read not in (STUDENT, TEACHER) for read in reads):
        raise DistillError(
            "on-policy sampling (loss.on_policy.lmbda > 0) re-tokenizes the student's samples for the first "
            "teacher's tokenizer only; with teachers of other tokenizers set loss.on_policy.lmbda=0"
        )


def view_specs(views: list) -> list[tuple[str, object]]:
    """``(key, tokenizer)`` of each view, keyed by its vocabulary (as the student's tokenizer is)."""
    return [(fingerprint(sorted(t.get_vocab().items())), t) for t in views]


def member_metrics(dm, read, model, student, device, amp=None) -> dict:
    """A live teacher's numbers in a run whose teachers read rows of different tokenizers: its bits per
    byte on the validation text (one scale across tokenizers) and the student's top-1 agreement with it
    (on aligned spans of one token each when their tokenizers differ, else position by position, with
    its perplexity and the student's KL to it)."""
    from distill.eval.aligned import aligned_agreement
    from distill.eval.bytes import text_metrics, validation_text
    from distill.eval.metrics import evaluate, num_params

    tokenizer = {STUDENT: dm.tokenizer, TEACHER: dm.teacher_tokenizer}.get(read) or dm.view_tokenizers[read]
    texts = validation_text(dm.base)
    out = {k.split(".", 1)[1]: v for k, v in text_metrics({"m": (model, tokenizer)}, texts, device).items()}
    out["params"] = num_params(model)
    if read == STUDENT:
        loader = dm.val_dataloader()
        found = evaluate(
            {"teacher": model, "student": student}, loader, len(tokenizer), device=device, autocast_dtype=amp
        )
        return out | {
            "val_ppl": found["teacher"]["val_ppl"],
            "student_top1_agreement": found["student"]["top1_agreement"],
            "student_kl": found["student"]["kl_to_teacher"],
        }
    agreement = aligned_agreement(
        {"student": student}, model, dm.val_dataloader(), dm, device, amp, feed=read, teacher_tokenizer=tokenizer
    )
    return out | {"student_top1_agreement": agreement["student"]}
