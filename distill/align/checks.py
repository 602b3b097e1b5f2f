"""Whether a teacher and a student tokenize alike, and the one-line refusals when they do not.

Same-vocabulary objectives (forward KL, JSD, ... in ``distill.losses.divergences``) compare the
two models token by token, which only means something when both tokenize every text the same
way: the same vocabulary (token -> id), the same special tokens and the same pipeline around the
model (normalizer, pre-tokenizer), since one vocabulary can split text differently. Otherwise the
cross-tokenizer objectives (``uld``, ``gold``, ``projected_kl``, ``prefix_kl``, ``alm``, ``dual_space``) are needed, on aligned spans.
"""

from __future__ import annotations

import json

from distill.errors import DistillError

CROSS_VOCAB_TERMS = ("uld", "gold", "projected_kl", "prefix_kl", "alm", "dual_space")


def tokenization(tokenizer) -> tuple:
    """What decides how a text becomes ids: the vocabulary, the specials, the pipeline around them."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "is_fast", False) else {}
    pipeline = json.dumps([spec.get(k) for k in ("normalizer", "pre_tokenizer", "model")], sort_keys=True)
    return tuple(sorted(tokenizer.get_vocab().items())), tuple(sorted(tokenizer.all_special_ids)), pipeline


def same_tokenization(teacher_tokenizer, student_tokenizer) -> bool:
    return teacher_tokenizer is student_tokenizer or tokenization(teacher_tokenizer) == tokenization(student_tokenizer)


def check_objective(terms, teacher_tokenizer, student_tokenizer) -> None:
    """Refuse, in one line, same-vocabulary terms between models that tokenize differently, and
    cross-tokenizer terms where the two tokenize alike (an exact divergence then serves better)."""
    terms = list(terms)
    same = same_tokenization(teacher_tokenizer, student_tokenizer)
    cross = [t for t in terms if t in CROSS_VOCAB_TERMS]
    exact = [t for t in terms if t not in CROSS_VOCAB_TERMS and t != "ce"]
    if not same and exact:
        raise DistillError(
            f"the student's tokenizer differs from the teacher's, so loss term {exact[0]!r} (same vocabulary, "
            f"token by token) cannot compare them; use a cross-tokenizer objective: loss=gold, loss=prefix_kl, loss=projected_kl or loss=uld"
        )
    if same and cross:
        raise DistillError(
            f"teacher and student tokenize alike: loss term {cross[0]!r} is for different tokenizers; "
            "use loss=forward_kl (the exact divergence on one vocabulary)"
        )
