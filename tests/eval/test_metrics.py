"""evaluate(): perplexity, agreement and KL against plain per-token references."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from distill.eval.metrics import evaluate
from tests.student.tiny_models import VOCAB, tiny_model


def _loader(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, VOCAB, (6, 16), generator=g)
    targets = torch.randint(0, VOCAB, (6, 16), generator=g)
    targets[:, :3] = -100  # not targets: excluded from every number
    return DataLoader(TensorDataset(inputs, targets), batch_size=4), inputs, targets


def test_kl_agreement_and_ppl_match_a_plain_computation():
    teacher, student = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    loader, inputs, targets = _loader()
    out = evaluate({"teacher": teacher, "student": student}, loader, VOCAB)

    with torch.no_grad():
        t, s = teacher(inputs).logits.float(), student(inputs).logits.float()
    valid = targets != -100
    pt, ls = t[valid].log_softmax(-1), s[valid].log_softmax(-1)
    kl = (pt.exp() * (pt - ls)).sum(-1).mean().item()
    agree = (t.argmax(-1) == s.argmax(-1))[valid].float().mean().item()
    ppl = math.exp(F.cross_entropy(s[valid], targets[valid]).item())

    assert math.isclose(out["student"]["kl_to_teacher"], kl, rel_tol=1e-4)
    assert math.isclose(out["student"]["top1_agreement"], agree, rel_tol=1e-6)
    assert math.isclose(out["student"]["val_ppl"], ppl, rel_tol=1e-4)
    assert out["student"]["tokens"] == int(valid.sum())
    assert "kl_to_teacher" not in out["teacher"]


def test_a_model_has_zero_kl_to_its_own_copy():
    teacher = tiny_model("llama", seed=0)
    copy = tiny_model("llama", seed=0)
    loader, _, _ = _loader()
    out = evaluate({"teacher": teacher, "copy": copy}, loader, VOCAB)
    assert abs(out["copy"]["kl_to_teacher"]) < 1e-5
    assert out["copy"]["top1_agreement"] == 1.0
