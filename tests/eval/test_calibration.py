"""Expected calibration error (Guo et al. 2017, 15 equal-width bins) on hand-worked examples."""

import math

import torch

from distill.eval.calibration import bin_sums, ece, top1_bin_sums


def test_ece_by_hand():
    # bin 14 (14/15, 1]: confidences 0.95 and 0.99, one right -> |1 - 1.94| / 4
    # bin 7 (7/15, 8/15]: confidences 0.5 and 0.5, both right -> |2 - 1.0| / 4
    conf = torch.tensor([0.95, 0.99, 0.5, 0.5], dtype=torch.float64)
    correct = torch.tensor([True, False, True, True])
    assert math.isclose(ece(bin_sums(conf, correct)), (0.94 + 1.0) / 4, rel_tol=1e-12)


def test_bin_edges_are_right_closed_and_sums_accumulate():
    sums = bin_sums(torch.tensor([1 / 15, 0.0, 1.0], dtype=torch.float64), torch.tensor([True, True, False]))
    assert sums[0].tolist()[:1] == [2.0] and sums[0, 14] == 1  # 1/15 and 0 in the first bin, 1.0 in the last
    halves = bin_sums(torch.tensor([0.95]), torch.tensor([True])) + bin_sums(torch.tensor([0.5]), torch.tensor([False]))
    assert math.isclose(ece(halves), (0.05 + 0.5) / 2, rel_tol=1e-6)  # float32 confidences
    assert ece(torch.zeros(3, 15)) == 0.0


def test_calibrated_and_overconfident_predictions():
    # a model that says 0.8 and is right 80% of the time is calibrated; one that says 0.99 is not
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1]])).expand(10, 3)
    targets = torch.tensor([0] * 8 + [1, 2])
    valid = torch.ones(10, dtype=torch.bool)
    assert ece(top1_bin_sums(logits, targets, valid)) < 1e-6
    sharp = torch.log(torch.tensor([[0.99, 0.005, 0.005]])).expand(10, 3)
    assert math.isclose(ece(top1_bin_sums(sharp, targets, valid)), 0.19, rel_tol=1e-5)
    valid[8:] = False  # only the right ones counted: 0.99 vs 1.0
    assert math.isclose(ece(top1_bin_sums(sharp, targets, valid)), 0.01, rel_tol=1e-4)
