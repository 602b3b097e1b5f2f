"""The sampled teacher cache (``teacher.cache_mode=sample teacher.samples=N``): per token, N tokens drawn
from the teacher's distribution with replacement, stored as the distinct tokens drawn and their counts.

Why (Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs"): a
top-k cache drops the teacher's tail, so the student's gradient is biased towards the head and the
student comes out over-confident. With the empirical distribution p̂(v) = count(v) / N, E[p̂] = p, and
forward KL(p̂ ‖ q) has the gradient q − p̂ on the student's logits: an unbiased estimate of the
full-vocabulary gradient q − p. The training loss needs no new kernel: the cache hands the loss p̂ as
a ``SparseTeacher`` (log p̂ over the N slots), and the ``bucket`` tail sees a teacher tail mass of 0
(clamped to ``TAIL_EPS``: the gradient is q − p̂ to within 1e-6 of mass; tests/teacher/test_sampled.py).

Which objectives stay unbiased on p̂ (``check_objective``): forward KL (linear in p) and CE (no teacher).
Reverse KL, JSD (β > 0), TVD and the cross-tokenizer terms are not linear in p: their plug-in estimate
on p̂ is biased (reverse KL on p̂ is even infinite wherever the student puts mass on an undrawn token),
so a run refuses them in one line rather than train on a silently wrong target. A loss temperature
other than 1 re-tempers p̂ (softmax(log p̂ / T) is not an estimate of the tempered teacher): the cache
draws at ``teacher.temperature`` instead, and training refuses ``loss.temperature != 1``.

Storage (format version 3, ``cache_manifest``): a shard's ``values`` file holds the counts in the
narrowest unsigned type (uint8 up to N = 255), its ``indices`` file the ids (narrowest integer type),
N slots per token, most drawn first (ties by ascending id). A token with u < N distinct draws fills
its other N − u slots with distinct ids it did not draw, count 0: every slot is a distinct outcome, so
the kernels' gathers and scatters never see a repeated id (the compiled bucket kernel sums the slots'
probabilities), and a padded slot reads back as log-probability ``PAD_LOGPROB``, whose exp is exactly
0 but which is finite: 0 · (−inf) = NaN where the kernels compute p · (log p − log q). At vocab
<= 65,536 that is 3 bytes per slot against the fp16 top-k's 4 (a float16 log-prob + id).

Seeded: each shard draws (``torch.multinomial``) from its own generator, seeded by
(``teacher.sample_seed``, split, shard), so a rerun, a resumed run or another rank gives the same shard on
the same kind of device (a GPU's generator draws other numbers than the CPU's).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from distill.errors import DistillError

CACHE_MODES = ("topk", "sample")  # teacher.cache_mode
PAD_LOGPROB = -1e4  # an undrawn slot: exp() is exactly 0 even in float64, and finite (see module doc)
UNBIASED_TERMS = ("forward_kl", "ce")  # (and jsd at beta = 0, which is forward KL)
_CHUNK_ELEMENTS = 1 << 22  # tokens x max(vocabulary, 2 N^2) per draw: bounds its memory


def count_dtype(samples: int) -> np.dtype:
    """The narrowest unsigned type that holds a count up to ``samples``."""
    return np.dtype(np.uint8 if samples <= 255 else np.uint16 if samples <= 65535 else np.uint32)


def shard_generator(seed: int, split: str, shard: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one shard: independent of which rank writes it, or when."""
    digest = hashlib.sha256(f"sampled-cache:{seed}:{split}:{shard}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@torch.no_grad()
def draw(log_probs: Tensor, samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``samples`` draws per token of ``log_probs`` ``[..., V]`` (normalised) -> (counts float32, ids int64),
    both ``[..., samples]``, most drawn first, undrawn slots filled with distinct undrawn ids (count 0)."""
    lead, vocab = log_probs.shape[:-1], log_probs.shape[-1]
    if samples > vocab:
        raise DistillError(f"teacher.samples must be at most the vocabulary size {vocab} (got {samples})")
    flat = log_probs.reshape(-1, vocab)
    # torch.multinomial, not an inverse CDF of our own: 9x faster on CPU (measured), and the tally below
    # works on [tokens, N, N], never on [tokens, V]
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 2 * samples * samples))
    parts = [
        _tally(torch.multinomial(rows.float().exp(), samples, replacement=True, generator=generator), vocab)
        for rows in flat.split(step)
    ]
    counts, ids = torch.cat([c for c, _ in parts]), torch.cat([i for _, i in parts])
    return counts.view(*lead, samples), ids.view(*lead, samples)


def _tally(drawn: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """Draws ``[n, N]`` -> (counts, ids) ``[n, N]``: the distinct ids drawn, most drawn first (ties: smaller
    id first), then the smallest ids never drawn, count 0 (among the first 2N ids there are always enough)."""
    n, samples = drawn.shape
    d = drawn.sort(-1).values
    count = (d[:, :, None] == d[:, None, :]).sum(-1)  # how often each draw's id was drawn
    first = torch.ones_like(d, dtype=torch.bool)
    first[:, 1:] = d[:, 1:] != d[:, :-1]  # one slot per distinct id
    candidates = torch.arange(min(2 * samples, vocab), device=d.device)
    free = ~(candidates[None, :, None] == d[:, None, :]).any(-1)
    pad = free & (free.cumsum(-1) <= samples - first.sum(-1, keepdim=True))
    ids = torch.cat([d, candidates.expand(n, -1)], -1)
    slots = torch.cat([torch.where(first, count, -1), torch.where(pad, 0, -1)], -1)  # -1: not a slot
    # count first, then the smaller id, as one integer key: exactly N entries are >= 0
    top = (slots * vocab + (vocab - 1 - ids)).topk(samples, dim=-1).values
    return torch.div(top, vocab, rounding_mode="floor").float(), vocab - 1 - top % vocab


def to_logprobs(counts: np.ndarray, samples: int) -> np.ndarray:
    """Stored counts -> float32 log p̂ = log(count / N), ``PAD_LOGPROB`` where the count is 0."""
    c = np.asarray(counts, np.float32)
    with np.errstate(divide="ignore"):
        lp = np.log(c) - np.float32(np.log(samples))
    return np.where(c > 0, lp, np.float32(PAD_LOGPROB)).astype(np.float32, copy=False)


def check_objective(objective, where: str = "the teacher cache") -> None:
    """One line refusing an objective whose loss is not an unbiased estimate on a sampled cache (a
    several-teacher member's logits-only request carries the terms too; an object without ``weights`` has
    nothing to check)."""
    weights = getattr(objective, "weights", None) or {}
    biased = [
        t for t, w in weights.items() if w > 0 and t not in UNBIASED_TERMS and not (t == "jsd" and objective.beta == 0)
    ]
    if biased:
        raise DistillError(
            f"{where} holds sampled tokens (teacher.cache_mode=sample): only forward_kl and ce (and jsd at "
            f"loss.beta=0) are unbiased on them, not {', '.join(biased)}; set loss.weights.{biased[0]}=0 or "
            "train from a top-k cache"
        )
    if any(w > 0 and t != "ce" for t, w in weights.items()) and objective.temperature != 1.0:
        raise DistillError(
            f"{where} holds sampled tokens (teacher.cache_mode=sample) and loss.temperature="
            f"{objective.temperature:g} would re-temper them (biased): train with loss.temperature=1 and "
            "write the cache at the teacher.temperature you want"
        )
