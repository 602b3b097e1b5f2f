"""``loss.prefix_kl.uncovered_ce``: CE on the student's rows no span's first row is, against CE written out row
by row with a weight per row (values and gradients), then inside the objective beside the prefix KL."""

import pytest
import torch
import torch.nn.functional as F

from distill.align.batch import collate
from distill.errors import DistillError
from distill.losses.cross_vocab import cross_vocab_loss
from distill.losses.divergences import IGNORE_INDEX
from distill.losses.objective import Objective, Outputs
from distill.losses.uncovered import uncovered_ce
from tests.losses.test_within import VS, VT, _batch, _logits, mapping


def per_row_ce(logits, labels, row_weight):
    """Σ_rows row_weight · CE(row) / the number of labelled rows, one row at a time."""
    flat, y = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    total = sum(row_weight[r] * F.cross_entropy(flat[r], y[r]) for r in range(len(y)) if y[r] != IGNORE_INDEX)
    return total / int((y != IGNORE_INDEX).sum())


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 7, 11, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    labels = torch.randint(0, 11, (2, 7), generator=g)
    labels[0, 0] = labels[1, 5] = IGNORE_INDEX  # a prompt row, a padded one
    covered = torch.tensor([0, 2, 3, 9, 12])  # flattened rows; row 0 has no label, 12 is the padded one's neighbour
    return logits, labels, covered


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uncovered_ce_is_the_ce_of_the_rows_left_over_all_labelled_rows(seed):
    logits, labels, covered = _case(seed)
    weight = torch.ones(14, dtype=torch.float64)
    weight[covered] = 0
    value = uncovered_ce(logits, labels, covered, chunk_size=3)
    ref = per_row_ce(logits, labels, weight)
    torch.testing.assert_close(value.double(), ref, rtol=1e-6, atol=1e-8)  # the chunks' float32
    (grad,), (grad_ref,) = torch.autograd.grad(value, logits), torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-8)
    assert grad.reshape(14, -1)[covered].abs().max() == 0  # the covered rows get nothing from it


def test_no_row_covered_is_the_mean_ce_and_every_row_covered_is_zero():
    logits, labels, _ = _case(3)
    mean = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(uncovered_ce(logits, labels, torch.zeros(0, dtype=torch.long)).double(), mean)
    assert uncovered_ce(logits, labels, torch.arange(14)).item() == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_beside_the_prefix_kl_each_uncovered_row_gets_ce_plus_w(seed):
    """ce 0.5 + uncovered_ce 0.5: the objective's CE is 1 on the rows no weighted span starts at and 0.5 on the
    others (the control's CE where no teacher signal reaches), the prefix KL unchanged; reported as its own part."""
    alignments, t_len, s_len = _batch(seed)
    batch, (s, t) = collate(alignments, t_len, s_len), _logits(seed, t_len, s_len)
    labels = torch.randint(0, VS, s.shape[:2], generator=torch.Generator().manual_seed(seed))
    obj = Objective({"ce": 0.5, "prefix_kl": 1.4}, prefix_kl={"uncovered_ce": 0.5})
    obj.mapping = mapping()
    terms = obj(Outputs(logits=s, vocab_size=VS), Outputs(logits=t, vocab_size=VT), labels, aligned=batch)
    kl, _ = cross_vocab_loss(s, t, batch, weights={"prefix_kl": 1.4}, mapping=obj.mapping)
    weight = torch.full((s.shape[0] * s.shape[1],), 0.5, dtype=torch.float64)
    weight[batch.student.rows] = 0.0  # (every span is weighted here: no mask)
    weight += 0.5
    assert 0 < (weight == 1.0).sum() < len(weight)
    ref = per_row_ce(s, labels, weight) + kl
    torch.testing.assert_close(terms["loss"].double(), ref, rtol=1e-6, atol=1e-8)
    (grad,), (grad_ref,) = torch.autograd.grad(terms["loss"], s), torch.autograd.grad(ref, s)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-8)
    assert terms["prefix_kl.uncovered_ce"].item() > 0


def test_the_setting_is_checked():
    assert Objective({"prefix_kl": 1.0}).prefix_spec["uncovered_ce"] == 0.0
    with pytest.raises(DistillError, match="loss.prefix_kl.uncovered_ce must be >= 0"):
        Objective({"prefix_kl": 1.0}, prefix_kl={"uncovered_ce": -0.5})
