"""Teacher-perplexity and reference-ratio scoring on a tiny Llama trained for two seconds."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from datatrove.data import Document
from transformers import AutoTokenizer

from distill.data.filters.lm_nll import score_texts
from distill.data.filters.scoring import ReferenceRatio, TeacherPerplexity
from distill.data.tokenizer import train_bpe
from distill.errors import DistillError
from distill.student.scratch import build_llama

REPEATED = "import os\n" * 60  # what a boilerplate page looks like to a model: trivially predictable


def train_tiny(tok, texts: list[str], steps: int = 150, seed: int = 0):
    """A 2-layer Llama trained on ``texts`` just long enough to know them apart from noise."""
    torch.manual_seed(seed)
    model = build_llama(len(tok), 64, 2, 4, max_seq_len=256, eos_token_id=tok.eos_token_id)
    ids = torch.tensor([i for t in texts for i in [tok.eos_token_id, *tok(t)["input_ids"]]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.stack([ids[s : s + 65] for s in torch.randint(0, len(ids) - 65, (16,), generator=g)])
        loss = F.cross_entropy(model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def lms(prose, tmp_path_factory):
    """Teacher (trained, with its tokenizer), reference (untrained, same tokenizer) and a model
    whose tokenizer differs."""
    root = tmp_path_factory.mktemp("lms")
    train_bpe(prose + [REPEATED], 512, root / "teacher")
    tok = AutoTokenizer.from_pretrained(str(root / "teacher"))
    train_tiny(tok, prose + [REPEATED] * 2).save_pretrained(root / "teacher")
    torch.manual_seed(1)
    build_llama(len(tok), 32, 1, 2, max_seq_len=256, eos_token_id=tok.eos_token_id).save_pretrained(root / "reference")
    tok.save_pretrained(root / "reference")
    train_bpe(prose[:3], 300, root / "other")
    other = AutoTokenizer.from_pretrained(str(root / "other"))
    build_llama(len(other), 32, 1, 2, max_seq_len=256).save_pretrained(root / "other")
    return root


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(str(path))


def reference_nll(model, tok, text: str, max_tokens: int) -> float:
    """The plain way: one text, no padding, BOS first."""
    ids = torch.tensor([[tok.bos_token_id, *tok(text)["input_ids"]][:max_tokens]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    return F.cross_entropy(logits[:-1], ids[0, 1:]).item()


def test_score_texts_matches_one_by_one_reference(lms, prose, noise):
    model, tok = load(lms / "teacher")
    texts = [prose[0], "x = 1", prose[1][:200], noise(0), REPEATED, prose[2] * 3]  # the last is truncated
    got = score_texts(model, tok, texts, batch_size=4, max_tokens=128)
    want = [reference_nll(model, tok, t, 128) for t in texts]
    assert got == pytest.approx(want, abs=1e-4)


def test_sorting_and_batch_size_do_not_change_scores(lms, prose, noise):
    model, tok = load(lms / "teacher")
    texts = [p[: 100 + 97 * i] for i, p in enumerate(prose[:7])] + [noise(1)]
    base = score_texts(model, tok, texts, batch_size=1, max_tokens=96)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    for batch_size in (3, 8):
        shuffled = score_texts(model, tok, [texts[i] for i in order], batch_size=batch_size, max_tokens=96)
        assert [shuffled[order.index(i)] for i in range(len(texts))] == pytest.approx(base, abs=1e-4)


def test_empty_text_scores_nan(lms):
    model, tok = load(lms / "teacher")
    scores = score_texts(model, tok, ["", "hello there"])
    assert math.isnan(scores[0]) and not math.isnan(scores[1])


def corpus(prose, noise) -> list[Document]:
    docs = [Document(text=p, id=f"prose{i}") for i, p in enumerate(prose[:8])]
    return docs + [Document(text=REPEATED, id="repeated"), Document(text=noise(2), id="noise")]


def test_teacher_ppl_keeps_the_band(lms, prose, noise, make_ctx, apply):
    docs = corpus(prose, noise)
    ctx, input_dir = make_ctx(docs, tasks=2, teacher_path=str(lms / "teacher"))
    stage = TeacherPerplexity(low_percentile=10, high_percentile=90, max_tokens=128)
    stage.prepare(ctx, input_dir)
    decisions = json.loads((ctx.work_dir / "decisions.json").read_text())
    # 10 documents, linear percentiles: exactly the lowest (the repetition) and the highest (noise) lie outside.
    assert decisions == {"repeated": "ppl_below_band", "noise": "ppl_above_band"}
    kept = apply(stage.steps(ctx), docs)
    assert sorted(d.id for d in kept) == sorted(f"prose{i}" for i in range(8))
    summary = json.loads((ctx.work_dir / "summary.json").read_text())
    assert summary["docs"] == 10 and summary["dropped"] == 2 and summary["ppl_low"] < summary["ppl_high"]


def test_teacher_ppl_rejects_bad_band():
    with pytest.raises(DistillError, match="low_percentile"):
        TeacherPerplexity(low_percentile=90, high_percentile=10)


def test_reference_ratio_keeps_top_fraction(lms, prose, noise, make_ctx, apply):
    docs = corpus(prose, noise)
    ctx, input_dir = make_ctx(docs, tasks=3, teacher_path=str(lms / "teacher"))
    stage = ReferenceRatio(reference_path=str(lms / "reference"), keep_fraction=0.5, max_tokens=128)
    stage.prepare(ctx, input_dir)
    kept = {d.id for d in apply(stage.steps(ctx), docs)}

    (teacher, tok), (ref, _) = load(lms / "teacher"), load(lms / "reference")
    texts = [d.text for d in docs]
    ratio = [
        r - t
        for t, r in zip(score_texts(teacher, tok, texts, max_tokens=128), score_texts(ref, tok, texts, max_tokens=128))
    ]
    top = {docs[i].id for i in sorted(range(len(docs)), key=lambda i: -ratio[i])[:5]}
    assert kept == top
    assert "noise" not in kept  # the teacher knows noise no better than an untrained model
    decisions = json.loads((ctx.work_dir / "decisions.json").read_text())
    assert set(decisions.values()) == {"reference_ratio"} and len(decisions) == 5


def test_reference_ratio_errors_clearly(lms, prose, noise, make_ctx, tmp_path):
    with pytest.raises(DistillError, match="reference_path is required"):
        ReferenceRatio()
    with pytest.raises(DistillError, match="does not exist"):
        ReferenceRatio(reference_path=str(tmp_path / "missing"))
    ctx, input_dir = make_ctx(corpus(prose, noise), tasks=1, teacher_path=str(lms / "teacher"))
    with pytest.raises(DistillError, match="different vocabulary"):
        ReferenceRatio(reference_path=str(lms / "other")).prepare(ctx, input_dir)
    build_llama(100, 32, 1, 2).save_pretrained(tmp_path / "no_tokenizer")  # too few rows for the teacher's ids
    with pytest.raises(DistillError, match="fewer than the"):
        ReferenceRatio(reference_path=str(tmp_path / "no_tokenizer")).prepare(ctx, input_dir)
