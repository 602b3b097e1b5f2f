"""Distillation across vocabularies: ULD and GOLD on aligned spans, chunked over spans.

A teacher and a student with different tokenizers do not predict the same tokens, so their
distributions are compared per aligned span (``distill.align``): a group of teacher tokens and a
group of student tokens covering the same characters. Each side's distribution for a span is its
distribution over the span's first token, multiplied by the probabilities it gives the span's
later tokens under teacher forcing (the chain rule: the probability of the span's text; GOLD's
"observed" merge, MinED-style alignment). In log space, with z the logits row that predicts the
span's first token and T the temperature::

    v = log_softmax(z / T) + Σ_{later tokens j} log softmax(z_j / T)[token_j]

Terms (names as in ``loss.weights``):

- ``uld``  Universal Logit Distillation (Boizard et al. 2024): both probability vectors exp(v)
           sorted in decreasing order, the shorter padded with zeros to the longer's length, and
           their L1 distance Σ|sort(p) − sort(q)|. It needs no shared tokens at all.
- ``gold`` TRL's GOLD hybrid: on the tokens both vocabularies share (``distill.align.vocab``),
           the exact forward KL(p || q) on the shared tokens plus one bucket holding each side's
           remaining mass (the repo's "bucket" convention for a partial outcome space,
           ``distill.losses.divergences``: a proper distribution on M + 1 outcomes, 0 only when
           the two agree on every shared token); ULD on the unshared tokens' sorted
           probabilities. Combined as GOLD combines them: w·KL + (1 − w)·ULD with w the shared
           share of the teacher's vocabulary (TRL's adaptive weight) or ``matched_weight``.
           (TRL applies its generalized JSD to the shared tokens' probabilities as they are,
           unnormalized; the bucket keeps both sides proper distributions, on which KL is a
           divergence, and forward KL is the repo's default term.) ``spans="one_to_one"``: GOLD on
           the spans of one token on each side only. In a longer span the two first tokens are
           different strings ('):' + 'ĊĠĠĠ' against '):Ċ' + 'ĠĠĠ' where one tokenizer keeps the
           newline with the punctuation), so the exact KL on shared strings pulls the student toward
           its own '):', a token its tokenizer never emits before a newline, against its CE; measured
           in experiments/cross-tokenizer (why: GOLD's first-token merge compares alternatives of the
           first token, which mean different texts when the segmentations differ).
- ``projected_kl``  forward KL from the teacher's distribution projected onto the student's
           vocabulary, each teacher token's mass on the student token its text begins with, on the
           span's first rows (``distill.losses.projected``).
- ``prefix_kl``  forward KL between both distributions summed over prefix classes (the longest
           string both vocabularies hold that a token's text begins with), on the span's first rows
           (``distill.losses.projected``).

Both are scaled by T² like every divergence here (Hinton's convention, so weights stay
comparable across temperatures) and averaged over spans weighted by ``AlignedBatch.weight``.

``cross_vocab_loss`` computes them chunked over spans: each chunk gathers its rows' logits in
float32 ([chunk, V] for each model) and writes its gradient by hand, so no [spans × vocab]
buffer exists beyond one chunk's and the gradient w.r.t. the student logits. The merged later
tokens' gradients are sent back to their own rows in a final chunked pass. A cached (top-k)
teacher is read in its own positions and completed per chunk (``logit_rows``). The plain,
per-span references these kernels are tested against are in ``tests/losses/test_cross_vocab.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distill.align.batch import AlignedBatch, SideIndex
from distill.align.vocab import VocabMapping
from distill.errors import DistillError
from distill.losses.divergences import TAIL_EPS
from distill.losses.likelihood import alm_loss
from distill.losses.projected import Prefixes, Projection, prefix_per_span, projected_per_span
from distill.losses.sorted import gold_per_span, uld_per_span
from distill.losses.uncovered import uncovered_ce
from distill.losses.within import Within, within_loss
from distill.teacher.outputs import SparseTeacher

TERMS = ("uld", "gold", "projected_kl", "prefix_kl", "alm")
MAPPED = ("gold", "projected_kl", "prefix_kl")  # the terms that read the vocabulary mapping
GOLD_SPANS = ("all", "one_to_one")  # the spans GOLD compares (loss.gold.spans)


class Shared:
    """The vocabulary mapping as index tensors and masks on the logits' device, GOLD's weight, the
    projection of the teacher's vocabulary onto the student's (``projected_kl``) and both onto the
    shared strings (``prefix_kl``)."""

    def __init__(self, mapping: VocabMapping, device, matched_weight: float | None = None):
        as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)
        self.teacher, self.student = as_long(mapping.teacher_ids), as_long(mapping.student_ids)
        self.teacher_mask = _mask(self.teacher, mapping.teacher_size, device)
        self.student_mask = _mask(self.student, mapping.student_size, device)
        # how many tokens each side has outside the shared ones (the unshared ULD's vector lengths)
        self.teacher_rest = mapping.teacher_size - len(mapping.teacher_ids)
        self.student_rest = mapping.student_size - len(mapping.student_ids)
        adaptive = len(mapping.teacher_ids) / max(1, mapping.teacher_size)  # TRL's default
        self.weight = adaptive if matched_weight is None else float(matched_weight)
        self.projection = None if mapping.first_piece is None else Projection(mapping.first_piece, device)
        self.prefixes = None if mapping.teacher_prefix is None else Prefixes(mapping, device)


def _mask(ids: Tensor, size: int, device) -> Tensor:
    mask = torch.zeros(size, dtype=torch.bool, device=device)
    mask[ids] = True
    return mask


def token_logprobs(logits: Tensor, rows: Tensor, ids: Tensor, T: float, chunk: int) -> Tensor:
    """log softmax(logits[row] / T)[id] per (row, id), in float32, chunk by chunk (no gradient)."""
    out = torch.empty(len(rows), device=logits.device)
    for i in range(0, len(rows), chunk):
        x = logit_rows(logits, rows[i : i + chunk]) / T
        out[i : i + chunk] = x.gather(-1, ids[i : i + chunk, None]).squeeze(-1) - torch.logsumexp(x, dim=-1)
    return out


@dataclass(frozen=True)
class CachedRows:
    """A cached teacher's top-k log-probabilities, rows flattened, and its vocabulary size."""

    logprobs: Tensor  # [N, k]
    indices: Tensor  # [N, k]
    width: int

    @property
    def device(self):
        return self.logprobs.device


def logit_rows(logits: Tensor | CachedRows, rows: Tensor) -> Tensor:
    """[n, V] float32 logits of these rows; a cached teacher's top-k log-probabilities made dense.

    The cache keeps the teacher's k most likely tokens per position (``distill.teacher.cache``);
    ULD sorts whole vectors and GOLD reads shared tokens anywhere in them, so the rest of the
    teacher's mass (1 − Σ top-k, floored at TAIL_EPS) is spread evenly over the other V − k
    tokens: the least informed completion, exact when k = V. A later token of a span outside
    the top-k gets that share too (the cache would need each position's target log-prob to be
    exact there). As in ``divergences``, the temperature applies on top of the cached log-probs."""
    if not isinstance(logits, CachedRows):
        return logits[rows].float()
    lp, idx = logits.logprobs[rows].float(), logits.indices[rows].long()
    others = logits.width - idx.shape[-1]
    if others == 0:
        return torch.empty(lp.shape, device=lp.device).scatter_(-1, idx, lp)
    tail = (-torch.expm1(torch.logsumexp(lp, dim=-1, keepdim=True))).clamp_min(TAIL_EPS)
    spread = (tail / others).log().expand(-1, logits.width).contiguous()
    return spread.scatter_(-1, idx, lp)


def merged_offsets(logits: Tensor, side: SideIndex, spans: int, T: float, chunk: int) -> Tensor:
    """[K] Σ of each span's later tokens' log-probabilities (0 for a one-token span)."""
    lp = token_logprobs(logits, side.extra_rows, side.extra_ids, T, chunk)
    return torch.zeros(spans, device=logits.device).index_add_(0, side.extra_span, lp)


def cross_vocab_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    aligned: AlignedBatch,
    *,
    weights: dict[str, float],
    temperature: float = 1.0,
    mapping: VocabMapping | None = None,
    matched_weight: float | None = None,
    chunk_size: int = 256,
    teacher_vocab_size: int | None = None,
    gold_spans: str = "all",
    alm_breaks=None,
    alm_binarization: float = 1.0,
    prefix_cuts: str = "any",
    prefix_within: float = 0.0,
    prefix_within_rows: str = "teacher",
    prefix_uncovered_ce: float = 0.0,
    labels: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ_term weights[term] · term, each averaged over the aligned spans by ``aligned.weight``;
    returns (loss, {term: detached value}).

    student_logits [B, Ls, Vs] (or [B·Ls, Vs]) trimmed to the student's vocabulary; teacher_logits
    [B, Lt, Vt] likewise (no gradient), or a cached teacher's ``SparseTeacher`` [B, Lt, k] in the
    teacher's own positions (see ``logit_rows``; its vocabulary size from ``teacher_vocab_size`` or
    the mapping); ``aligned`` indexes their flattened rows
    (``distill.align.batch.collate``). ``gold`` and ``projected_kl`` need ``mapping`` (``distill.align.vocab``).
    ``gold_spans``: ``all`` or ``one_to_one`` (GOLD averaged over the spans of one token a side only).
    ``alm_breaks``: ALM over word chunks (``distill.losses.likelihood.WordBreaks``); None: over the spans.
    ``alm_binarization``: ALM's τ. ``prefix_cuts``: ``any``, or ``prefix_kl`` on the classes both
    tokenizers could cut before (``both``, ``observed``, ``within``: ``distill.losses.projected.Prefixes``).
    ``prefix_within``: with ``prefix_kl``, that term's weight times this on the KL inside each span's
    class (``distill.losses.within``), reported as ``prefix_kl.within``; ``prefix_within_rows``: whose next
    row splits the classes (``teacher`` or ``both``). ``prefix_uncovered_ce``: with ``prefix_kl``, this
    weight (not relative to the term's) on the CE of the student's rows no span the term compares starts at
    (``distill.losses.uncovered``), reported as ``prefix_kl.uncovered_ce``; it needs ``labels`` [B, Ls].
    Settings are trusted (terms of ``TERMS``, weights >= 0, temperature > 0, chunk_size >= 1)."""
    s2 = student_logits.reshape(-1, student_logits.shape[-1])
    if isinstance(teacher_logits, SparseTeacher):
        width = teacher_vocab_size or (mapping.teacher_size if mapping is not None else None)
        if width is None:
            raise DistillError("a cached (top-k) teacher needs its vocabulary size: teacher_vocab_size or a mapping")
        flat = teacher_logits.flatten_tokens()
        t2 = CachedRows(flat.logprobs, flat.indices, width)
    else:
        t2 = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    mapped = [term for term in MAPPED if term in weights]
    if mapped:
        _check_mapping(mapped[0], mapping, s2.shape[-1], t2.width if isinstance(t2, CachedRows) else t2.shape[-1])
    shared = Shared(mapping, s2.device, matched_weight) if mapped else None
    if "prefix_kl" in weights:
        shared.prefixes.cuts_mode = prefix_cuts
    out = {}
    if "alm" in weights:  # one likelihood per span: plain autograd (distill.losses.likelihood)
        out["alm"] = alm_loss(
            lambda r: s2[r], lambda r: logit_rows(t2, r), aligned, float(temperature), alm_breaks, alm_binarization
        )
    rest = {term: w for term, w in weights.items() if term != "alm"}
    loss = weights.get("alm", 0.0) * out["alm"] if out else None
    if rest:
        span_w = aligned.weight.to(s2.device, torch.float32)
        span_weights = {term: span_w for term in rest}
        if "gold" in rest and gold_spans == "one_to_one":
            span_weights["gold"] = span_w * aligned.one_to_one.to(s2.device)
        # prefix_kl's classes restricted by where the tokenizers cut: each span's context, read once per batch
        context = shared.prefixes.context(aligned) if "prefix_kl" in rest and prefix_cuts != "any" else None
        if "prefix_kl" in rest and prefix_cuts == "both":  # a span whose own next class one side could not cut before
            span_weights["prefix_kl"] = span_w * shared.prefixes.cuts[context[:, 0], context[:, 1]]
        value, parts = _CrossVocabLoss.apply(
            s2, t2, aligned, rest, span_weights, shared, float(temperature), int(chunk_size), context
        )
        out |= dict(zip(rest, parts.unbind()))
        loss = value if loss is None else loss + value
        if "prefix_kl" in rest and prefix_within > 0:
            lens = {"teacher": _per_sequence(teacher_logits), "student": _per_sequence(student_logits)}
            args = (s2, t2, aligned, span_weights["prefix_kl"], shared, mapping, lens, prefix_within_rows)
            out["prefix_kl.within"] = _within(*args, float(temperature), int(chunk_size))
            loss = loss + weights["prefix_kl"] * prefix_within * out["prefix_kl.within"]
        if "prefix_kl" in rest and prefix_uncovered_ce > 0:
            covered = aligned.student.rows.to(s2.device)[span_weights["prefix_kl"] > 0]
            out["prefix_kl.uncovered_ce"] = _uncovered(student_logits, labels, covered, int(chunk_size))
            loss = loss + prefix_uncovered_ce * out["prefix_kl.uncovered_ce"]
    return loss, {term: out[term].detach() for term in (*weights, *(k for k in out if k not in weights))}


def _uncovered(student_logits: Tensor, labels: Tensor | None, covered: Tensor, chunk: int) -> Tensor:
    if labels is None:
        raise DistillError("loss.prefix_kl.uncovered_ce needs the student's labels (cross_vocab_loss(labels=...))")
    return uncovered_ce(student_logits, labels, covered, chunk)


def _per_sequence(logits) -> int:
    """Rows per sequence of [B, L, V] logits (or a cache's [B, L, k]); [N, V]: one sequence."""
    x = logits.logprobs if isinstance(logits, SparseTeacher) else logits
    return x.shape[1] if x.ndim == 3 else x.shape[0]


def _within(s2, t2, aligned, span_w, shared, mapping, lens, rows: str, T: float, chunk: int) -> Tensor:
    """``prefix_kl.within``: the KL inside the classes split by the teacher's next row (and the student's)."""
    if mapping.within is None or (rows == "both" and mapping.within_student is None):
        raise DistillError("loss.prefix_kl.within needs the subclass tables of vocab_mapping(prefixes=True)")
    splits = {"teacher": Within(mapping.within, shared.prefixes.teacher, s2.device)}
    if rows == "both":
        splits["student"] = Within(mapping.within_student, shared.prefixes.student, s2.device)
    return within_loss(s2, lambda r: logit_rows(t2, r), aligned, span_w, splits, T, chunk, lens)


def _check_mapping(term: str, mapping: VocabMapping | None, student_width: int, teacher_width: int) -> None:
    """GOLD and the projection read the logits through the mapping: both must describe the same vocabularies."""
    if (
        mapping is None
        or (term == "projected_kl" and mapping.first_piece is None)
        or (term == "prefix_kl" and mapping.teacher_prefix is None)
    ):
        raise DistillError(
            f"loss term {term!r} needs the vocabulary mapping of the two tokenizers (distill.align.vocab)"
        )
    if (mapping.student_size, mapping.teacher_size) != (student_width, teacher_width):
        raise DistillError(
            f"logits of {student_width} (student) and {teacher_width} (teacher) tokens do not match the vocabulary "
            f"mapping's {mapping.student_size} and {mapping.teacher_size}: trim LM-head padding rows to the tokenizers first"
        )


# Each per-span term: (lv_s, lv_t, shared, off_s, off_t, want_grad, context) -> (value [c], d/d lv_s [c, Vs],
# d/d off_s where it enters other than through lv_s, [c] or None); hand-written, checked by the tests.
_PER_SPAN = {
    "uld": uld_per_span,
    "gold": gold_per_span,
    "projected_kl": projected_per_span,
    "prefix_kl": prefix_per_span,
}


class _CrossVocabLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s2, t2, aligned, weights, span_weights, shared, T, chunk, context):
        """``span_weights``: each term's weight per span (the batch's, or GOLD's one-to-one spans),
        its average's denominator their sum. ``context``: [K, 2] prefix_kl's per span (``Prefixes.context``)
        or None."""
        K = len(aligned)
        denoms = {term: float(span_weights[term].sum()) or 1.0 for term in weights}
        off_s = merged_offsets(s2, aligned.student, K, T, chunk)
        off_t = merged_offsets(t2, aligned.teacher, K, T, chunk)
        want_grad = s2.requires_grad
        grad = torch.zeros(s2.shape, device=s2.device) if want_grad else None
        grad_off = torch.zeros(K, device=s2.device)
        sums = {term: torch.zeros((), device=s2.device) for term in weights}
        for i in range(0, K, chunk):
            c = slice(i, i + chunk)
            log_sm = torch.log_softmax(s2[aligned.student.rows[c]].float() / T, dim=-1)
            lv_s = log_sm + off_s[c].unsqueeze(-1)
            lv_t = torch.log_softmax(logit_rows(t2, aligned.teacher.rows[c]) / T, dim=-1) + off_t[c].unsqueeze(-1)
            g_lv, g_off = None, torch.zeros_like(off_s[c])
            for term, w in weights.items():
                at = context[c] if context is not None and term == "prefix_kl" else None
                value, g, g_o = _PER_SPAN[term](lv_s, lv_t, shared, off_s[c], off_t[c], want_grad, at)
                span_w = span_weights[term][c]
                sums[term] += (value * span_w).sum() * T**2
                if want_grad:
                    scale = span_w * (T**2 * w / denoms[term])
                    g_lv = g.mul_(scale.unsqueeze(-1)) if g_lv is None else g_lv.addcmul_(g, scale.unsqueeze(-1))
                    g_off += 0 if g_o is None else g_o * scale
            if want_grad and g_lv is not None:
                # lv_s = log_softmax(z / T) + o: back through the softmax to z, and to o directly
                total = g_lv.sum(-1)
                grad[aligned.student.rows[c]] = log_sm.exp_().mul_(-total.unsqueeze(-1)).add_(g_lv).div_(T)
                grad_off[c] = total + g_off
        if want_grad:
            _merged_backward(grad, s2, aligned.student, grad_off, T, chunk)
        parts = torch.stack([sums[term] / denoms[term] for term in weights])
        loss = sum(w * parts[i] for i, w in enumerate(weights.values()))
        ctx.save_for_backward(grad if grad is not None else s2.new_empty(0))
        ctx.dtype = s2.dtype
        ctx.mark_non_differentiable(parts)
        return torch.as_tensor(loss, device=s2.device, dtype=torch.float32), parts

    @staticmethod
    def backward(ctx, grad_loss, _grad_parts):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.dtype), *([None] * 8)


def _merged_backward(grad: Tensor, s2: Tensor, side: SideIndex, grad_off: Tensor, T: float, chunk: int) -> None:
    """Each later token's log-prob entered its span's offset: d/dz of log softmax(z/T)[id] is
    (onehot(id) − softmax(z/T)) / T, scaled by the offset's gradient, written to the token's row.

    Written, not added: a row predicts one token, which is either a span's first token or a later
    one, so the rows of spans and of later tokens are all distinct (index_add_ costs several times
    more on the CPU)."""
    for i in range(0, len(side.extra_rows), chunk):
        rows, ids = side.extra_rows[i : i + chunk], side.extra_ids[i : i + chunk]
        scale = (grad_off[side.extra_span[i : i + chunk]] / T).unsqueeze(-1)
        g = torch.softmax(s2[rows].float() / T, dim=-1).neg_().scatter_add_(-1, ids[:, None], torch.ones_like(scale))
        grad[rows] = g.mul_(scale)
