"""Expected calibration error of a model's next-token top-1 probability (Guo et al. 2017, "On Calibration of
Modern Neural Networks", eq. 3): the predictions are grouped into ``BINS`` equal-width bins of confidence
(the top-1 probability), bin m holding confidences in ((m − 1) / M, m / M], and

    ECE = Σ_m |B_m| / n · |acc(B_m) − conf(B_m)|

with acc the fraction of the bin whose top-1 token is the target, conf its mean confidence. 0 is perfectly
calibrated; an over-confident model (top-k teacher caches are known to make students so) has conf > acc.
Accumulated as per-bin sums over batches, so a validation pass needs no per-token storage.
"""

from __future__ import annotations

import torch
from torch import Tensor

BINS = 15  # Guo et al. 2017's choice, the common default


def bin_sums(confidence: Tensor, correct: Tensor, bins: int = BINS) -> Tensor:
    """``[3, bins]`` float64: per bin the number of predictions, their summed confidence and the number
    correct; ``confidence`` and ``correct`` are 1-D over the predictions counted."""
    conf = confidence.detach().double().reshape(-1)
    # bin m (0-based) holds (m / M, (m + 1) / M]; a confidence of exactly 0 joins the first bin
    index = (torch.ceil(conf * bins).long() - 1).clamp_(0, bins - 1)
    sums = torch.zeros(3, bins, dtype=torch.float64, device=conf.device)
    sums[0].index_add_(0, index, torch.ones_like(conf))
    sums[1].index_add_(0, index, conf)
    sums[2].index_add_(0, index, correct.detach().reshape(-1).double())
    return sums


def ece(sums: Tensor) -> float:
    """The expected calibration error of accumulated ``bin_sums`` (0 when nothing was counted)."""
    count, conf, correct = sums.double().cpu()
    total = count.sum()
    if total == 0:
        return 0.0
    return float(((conf - correct).abs() / total).sum())  # |B|/n · |acc − conf| = |Σcorrect − Σconf| / n


def top1_bin_sums(logits: Tensor, targets: Tensor, valid: Tensor, bins: int = BINS) -> Tensor:
    """``bin_sums`` of next-token predictions ``logits [..., V]`` against ``targets`` on the ``valid`` tokens."""
    probs = logits[valid].float().softmax(-1)
    confidence, top1 = probs.max(-1)
    return bin_sums(confidence, top1 == targets[valid], bins)
