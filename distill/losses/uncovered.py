"""``loss.prefix_kl.uncovered_ce``: CE's extra weight on the student's rows the prefix KL never reads.

The prefix KL compares the two models at each aligned span's first row only (``distill.losses.projected``).
Where the student's tokenizer cuts a span into several tokens (a Llama 3-style ``'):\\n'`` then the
indentation, where GPT-2's split has ``'):'`` then ``'\\n'`` + indentation) the student's rows inside the
span get no teacher signal, nor do those outside every span or at a span the term leaves out
(``cuts=both``): beside the KL they learn from CE alone, at CE's weight there (0.5 in ``loss=prefix_kl``),
half of what the CE-only control gives every row. Measured in ``experiments/cross-tokenizer``: the
prefix-KL student modelled the indentation worse than its control (12.7% of the training rows there are
inside a span).

The term is the CE of those rows summed over them and divided by *all* rows with a label, so at weight w a
row outside the KL's reach has CE weight ``ce + w`` and every other row keeps ``ce`` (``ce + w = 1``: the
control's CE on the rows no teacher reaches). Hand-written because no library weights CE by row this way
for a cross-tokenizer alignment; the CE itself is the repo's chunked one.
"""

from __future__ import annotations

from torch import Tensor

from distill.losses.divergences import IGNORE_INDEX, chunked_logit_loss


def uncovered_rows(labels: Tensor, covered: Tensor) -> Tensor:
    """[n] the flattened rows with a label that are not in ``covered``."""
    left = labels.reshape(-1) != IGNORE_INDEX
    left[covered] = False
    return left.nonzero().squeeze(-1)


def uncovered_ce(logits: Tensor, labels: Tensor, covered: Tensor, chunk_size: int = 256) -> Tensor:
    """Σ CE over the labelled rows not in ``covered`` / the number of labelled rows.

    logits [B, L, V] (or [N, V]); labels [B, L] (IGNORE_INDEX: no CE); covered [K] long, flattened row
    indices (the student's first rows of the spans the KL compares: ``cross_vocab_loss``). Only the rows
    left are read (a gather of 13-25% of the rows in experiments/cross-tokenizer), not the whole batch."""
    rows, y = uncovered_rows(labels, covered), labels.reshape(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    mean, _ = chunked_logit_loss(flat[rows], None, y[rows], None, weights={"ce": 1.0}, chunk_size=chunk_size)
    return mean * len(rows) / (y != IGNORE_INDEX).sum().clamp_min(1)
