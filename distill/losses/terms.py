"""The registry of loss terms: one entry per term, saying what it compares and what it needs.

Everything else derives from it: the term names ``loss.weights`` accepts and the settings the
objective validates (``distill.losses.spec``), which terms go through the chunked/fused logit
engine (``divergences``, ``fused_linear``), what the models must return, and the run's checks
(a teacher cache serves only terms on output distributions). The config side is one YAML file
per term, ``configs/loss/terms/<name>.yaml``, holding that term's own settings.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

# What a term compares. Output distributions go through one memory-bounded engine (chunked over
# tokens, or fused with the LM head); internal representations are small modules bound to the
# models' shapes, fed by the models' hidden states or attention maps.
DISTRIBUTION = "distribution"
REPRESENTATION = "representation"
# Output distributions over two vocabularies (a student with its own tokenizer): compared per span
# of text the two tokenizations share (``distill.align``), in ``distill.losses.cross_vocab``.
ALIGNED = "aligned"

# What both models must return for a term (``needs``).
LOGITS, HIDDEN_STATES, ATTENTIONS = "logits", "hidden_states", "attentions"


@dataclass(frozen=True)
class Term:
    """One loss term, named as in ``loss.weights.<name>``."""

    name: str
    title: str  # what it is, in a few words (for messages)
    compares: str  # DISTRIBUTION or REPRESENTATION
    needs_teacher: bool  # False only for CE, which reads the data's labels
    needs: str  # what both models must return: LOGITS, HIDDEN_STATES or ATTENTIONS
    settings: tuple[str, ...] = ()  # the loss.* settings it reads besides its weight (dotted below a block)
    aliases: tuple[str, ...] = ()  # what users may call it elsewhere: only to suggest the right name

    @property
    def live_teacher_only(self) -> bool:
        """A top-k teacher cache stores log-probabilities only, never the teacher's internals."""
        return self.needs != LOGITS

    @property
    def divergence(self) -> bool:
        """Compares the student's output distribution with the teacher's (a kernel in ``divergences``)."""
        return self.compares == DISTRIBUTION and self.needs_teacher


# Every distribution term runs in the engine, which bounds its memory by these; divergences also
# read the temperature and, with a sparse (cached top-k) teacher, ``tail``.
_ENGINE = ("chunk_size", "fused_linear")
_DIVERGENCE_SETTINGS = ("temperature", "tail", *_ENGINE)
_ALIGNED_SETTINGS = ("temperature", "chunk_size")  # chunked over spans; never fused (it needs both vocabularies)

REGISTRY: dict[str, Term] = {
    term.name: term
    for term in (
        Term(
            "forward_kl",
            "forward KL(teacher || student)",
            DISTRIBUTION,
            True,
            LOGITS,
            _DIVERGENCE_SETTINGS,
            aliases=("kl", "fkl", "kd", "kl_div"),
        ),
        Term(
            "reverse_kl",
            "reverse KL(student || teacher)",
            DISTRIBUTION,
            True,
            LOGITS,
            _DIVERGENCE_SETTINGS,
            aliases=("rkl",),
        ),
        Term(
            "jsd",
            "generalized Jensen-Shannon divergence",
            DISTRIBUTION,
            True,
            LOGITS,
            ("beta", *_DIVERGENCE_SETTINGS),
            aliases=("js", "gkd"),
        ),
        Term(
            "tvd",
            "total variation distance",
            DISTRIBUTION,
            True,
            LOGITS,
            _DIVERGENCE_SETTINGS,
            aliases=("tv", "total_variation"),
        ),
        Term(
            "ce",
            "next-token cross-entropy on the labels",
            DISTRIBUTION,
            False,
            LOGITS,
            _ENGINE,
            aliases=("cross_entropy", "xent", "nll", "lm"),
        ),
        Term(
            "uld",
            "Universal Logit Distillation across vocabularies",
            ALIGNED,
            True,
            LOGITS,
            _ALIGNED_SETTINGS,
            aliases=("universal_logit", "cross_tokenizer"),
        ),
        Term(
            "gold",
            "GOLD (exact KL on shared tokens, ULD on the rest)",
            ALIGNED,
            True,
            LOGITS,
            ("gold.matched_weight", "gold.spans", *_ALIGNED_SETTINGS),
            aliases=("gold_loss",),
        ),
        Term(
            "projected_kl",
            "forward KL from the teacher's distribution projected onto the student's vocabulary",
            ALIGNED,
            True,
            LOGITS,
            _ALIGNED_SETTINGS,
            aliases=("projected", "first_piece_kl"),
        ),
        Term(
            "prefix_kl",
            "forward KL between both distributions summed by the shared string each token begins with",
            ALIGNED,
            True,
            LOGITS,
            (
                "prefix_kl.cuts",
                "prefix_kl.within",
                "prefix_kl.within_rows",
                "prefix_kl.uncovered_ce",
                *_ALIGNED_SETTINGS,
            ),
            aliases=("shared_prefix_kl",),
        ),
        Term(
            "alm",
            "approximate likelihood matching of each aligned span's text across vocabularies",
            ALIGNED,
            True,
            LOGITS,
            ("alm.chunks", "alm.binarization", "temperature"),
            aliases=("likelihood_matching",),
        ),
        Term(
            "dual_space",
            "dual-space KD (DSKD)",
            ALIGNED,
            True,
            HIDDEN_STATES,
            ("dual_space.spaces", "temperature", "chunk_size"),
            aliases=("dskd", "dual_space_kd"),
        ),
        Term(
            "hidden",
            "hidden-state distillation",
            REPRESENTATION,
            True,
            HIDDEN_STATES,
            ("hidden.pairs", "hidden.metric", "hidden.teacher"),
            aliases=("hidden_states", "mse", "cosine"),
        ),
        Term(
            "attention",
            "attention-map distillation",
            REPRESENTATION,
            True,
            ATTENTIONS,
            ("attention.pairs", "attention.teacher"),
            aliases=("attn", "attentions"),
        ),
    )
}

TERMS = tuple(REGISTRY)
DISTRIBUTION_TERMS = tuple(name for name, term in REGISTRY.items() if term.compares == DISTRIBUTION)
REPRESENTATION_TERMS = tuple(name for name, term in REGISTRY.items() if term.compares == REPRESENTATION)
ALIGNED_TERMS = tuple(name for name, term in REGISTRY.items() if term.compares == ALIGNED)
DIVERGENCES = tuple(name for name, term in REGISTRY.items() if term.divergence)


def nearest_term(name: str) -> str:
    """The registered term a mistyped or foreign name most likely means (for "did you mean")."""
    names = {alias: term.name for term in REGISTRY.values() for alias in (term.name, *term.aliases)}
    return names.get(name.lower()) or names[nearest(name.lower(), tuple(names))]


def nearest(name: str, choices: tuple[str, ...]) -> str:
    """The choice most like ``name`` by difflib's ratio; ties go to the earlier choice."""
    return max(enumerate(choices), key=lambda ic: (difflib.SequenceMatcher(None, name, ic[1]).ratio(), -ic[0]))[1]


def block_settings(block: str) -> tuple[str, ...]:
    """The keys terms read under ``loss.<block>`` (e.g. ``hidden`` -> ``("pairs", "metric")``)."""
    return tuple(
        key.split(".", 1)[1] for term in REGISTRY.values() for key in term.settings if key.startswith(block + ".")
    )
