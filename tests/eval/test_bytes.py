"""Bits per byte on real tiny models under different tokenizers, and top-1 agreement on aligned spans."""

import math

import pytest
import torch

from distill.align.batch import collate
from distill.align.encode import TextAligner
from distill.align.vocab import vocab_mapping
from distill.eval.bytes import (
    TextScore,
    aligned_top1_agreement,
    leading_text,
    model_agreement,
    score_text,
    score_texts,
    text_metrics,
    text_rows,
    windows,
)
from distill.student.scratch import build_llama
from tests.align.helpers import FAMILIES, HARD_TEXTS

BPE = ("bpe300", "bpe4096")
TEXT = "def  f(x):\n    return 'héllo 👋🏽 wörld'  # 日本語\n" * 3


def tiny_llama(tokenizer, seed=0, max_seq_len=64):
    torch.manual_seed(seed)
    model = build_llama(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, max_seq_len=max_seq_len)
    return model.eval()


def test_windows_target_every_token_exactly_once():
    ids = list(range(10, 33))
    for max_length in (2, 5, 8, 24, 100):
        chunks = windows(ids, 0, max_length)
        assert all(len(c) <= max_length for c in chunks) and chunks[0][0] == 0
        assert [t for c in chunks for t in c[1:]] == ids  # each window's first token is context only


@pytest.mark.parametrize("family", ["bpe300", "bpe4096", "byte_fallback"])
def test_a_uniform_model_costs_log2_vocabulary_bits_per_token_not_per_byte(family):
    """All-zero logits: every token costs exactly ln V nats, so bits per byte is tokens·log2 V / bytes."""
    tok = FAMILIES[family]()
    model = tiny_llama(tok)
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: the embeddings too; every logit is 0
    score = score_text(model, tok, TEXT, max_length=16)
    tokens = len(tok(TEXT, add_special_tokens=False)["input_ids"])
    assert score.tokens == tokens and score.bytes == len(TEXT.encode()) > score.chars == len(TEXT)
    assert score.bits_per_token == pytest.approx(math.log2(len(tok)), rel=1e-5)
    assert score.bits_per_byte == pytest.approx(tokens * math.log2(len(tok)) / len(TEXT.encode()), rel=1e-5)
    assert score.lossless


def test_two_tokenizations_of_one_text_are_scored_over_the_same_bytes():
    """The same text under a 300- and a 4096-token vocabulary: every token is scored once (the sum
    equals the model's own mean loss × its targets, from the context token on), and both divide by
    the text's bytes, not by their different token counts."""
    scores = {}
    for family in ("bpe300", "bpe4096"):
        tok = FAMILIES[family]()
        model = tiny_llama(tok, max_seq_len=512)
        ids = torch.tensor([[tok.eos_token_id, *tok(TEXT, add_special_tokens=False)["input_ids"]]])
        hf_loss = model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        scores[family] = score_text(model, tok, TEXT)
        assert scores[family].nll == pytest.approx(hf_loss, rel=1e-5)
        assert score_text(model, tok, TEXT, max_length=7).tokens == scores[family].tokens  # same targets
    assert scores["bpe300"].tokens > 1.2 * scores["bpe4096"].tokens
    assert scores["bpe300"].bytes == scores["bpe4096"].bytes == len(TEXT.encode())
    # random models: near-uniform over their vocabularies, so the per-byte cost follows tokens·log2 V
    for family, score in scores.items():
        assert score.bits_per_token == pytest.approx(math.log2(len(FAMILIES[family]())), rel=0.05)


def test_scores_add_up_over_texts_and_wordpiece_is_not_lossless():
    tok = FAMILIES["bpe4096"]()
    model = tiny_llama(tok, max_seq_len=128)
    total = score_texts(model, tok, list(HARD_TEXTS))
    parts = [score_text(model, tok, t) for t in HARD_TEXTS]
    assert total.nll == pytest.approx(sum(p.nll for p in parts)) and total.bytes == sum(
        len(t.encode()) for t in HARD_TEXTS
    )
    assert total.lossless and (TextScore(1.0, 1, 1, 1) + TextScore(lossless=False)).lossless is False
    wordpiece = FAMILIES["wordpiece"]()
    assert not score_text(tiny_llama(wordpiece), wordpiece, "Héllo World").lossless  # lowercased, accent stripped


def _aligned(teacher_family, student_family, docs):
    t_tok, s_tok = FAMILIES[teacher_family](), FAMILIES[student_family]()
    t, s, a = TextAligner(t_tok, s_tok).align(docs)
    return t_tok, s_tok, t, s, collate([a], len(t.ids), len(s.ids))


def test_top1_agreement_counts_same_string_positions_and_follows_the_mapping():
    t_tok, s_tok, t, s, batch = _aligned("bpe4096", "byte_fallback", [TEXT])
    mapping = vocab_mapping(t_tok, s_tok)
    teacher = tiny_llama(t_tok, max_seq_len=256)
    with torch.no_grad():
        t_logits = teacher(input_ids=torch.from_numpy(t.ids)[None]).logits
    agree, count = aligned_top1_agreement(torch.randn(1, len(s.ids), len(s_tok)), t_logits, batch, mapping)
    assert 5 < count < len(batch) and 0 <= agree <= count
    # a student whose logits put the teacher's choice first (through the mapping) agrees everywhere
    copy = torch.full((1, len(s.ids), len(s_tok)), -10.0)
    t_top = mapping.teacher_to_student[t_logits[0].argmax(-1).numpy()]
    rows = batch.student.rows.numpy()
    for s_row, t_row in zip(rows, batch.teacher.rows.numpy()):
        if t_top[t_row] >= 0:
            copy[0, s_row, t_top[t_row]] = 10.0
    agree_copy, count_copy = aligned_top1_agreement(copy, t_logits, batch, mapping)
    mapped = sum(t_top[t_row] >= 0 for t_row in batch.teacher.rows.numpy()[_same(batch, mapping)])
    assert count_copy == count and agree_copy == mapped > agree


def _same(batch, mapping):
    to_student = torch.as_tensor(mapping.teacher_to_student)
    return (batch.one_to_one & (to_student[batch.teacher.first_ids] == batch.student.first_ids)).numpy()


def test_text_metrics_put_two_tokenizers_on_one_scale():
    """Two tiny Llamas under a 300- and a 4096-token vocabulary, on the same texts: finite values for
    both, the same values when scored again, and bits per byte × bytes = bits per char × chars."""
    texts = [TEXT, *HARD_TEXTS]
    models = {name: (tiny_llama(FAMILIES[name](), max_seq_len=32).train(), FAMILIES[name]()) for name in BPE}
    metrics = text_metrics(models, texts, device="cpu", max_length=16)
    assert sorted(metrics) == [f"{n}.bits_per_{u}" for n in BPE for u in ("byte", "char")]
    assert all(math.isfinite(v) and v > 0 for v in metrics.values())
    assert all(model.training for model, _ in models.values())  # scored in eval mode, its mode restored
    assert text_metrics(models, texts, max_length=16) == metrics
    n_bytes, n_chars = sum(len(t.encode()) for t in texts), sum(len(t) for t in texts)
    for name in models:
        assert metrics[f"{name}.bits_per_byte"] * n_bytes == pytest.approx(metrics[f"{name}.bits_per_char"] * n_chars)
    # a text longer than the model's positions is scored in windows of them, however long max_length is
    model, tok = models["bpe300"]
    assert score_text(model, tok, TEXT).nll == pytest.approx(score_text(model, tok, TEXT, max_length=10**6).nll)


def test_leading_text_and_rows_cut_at_token_ends():
    """Cuts fall where a token ends (a character's byte tokens stay together, so a re-tokenized
    piece may hold up to 3 more tokens); rows cover the texts exactly."""
    tok = FAMILIES["bpe300"]()
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    texts = [TEXT, "tail " + TEXT]
    assert leading_text(texts, tok, 10**6) == texts
    first, second = leading_text(texts, tok, n(TEXT) + 1 + 2)  # the first text, its EOS, two tokens more
    assert first == TEXT and texts[1].startswith(second) and n(second) == 2
    [head] = leading_text(texts, tok, 7)
    assert TEXT.startswith(head) and n(head) == 7
    rows = list(text_rows(texts, tok, 9))
    assert "".join(rows) == "".join(texts) and all(n(r) <= 9 + 3 for r in rows) and len(rows) > 10


def test_model_agreement_counts_same_string_positions_of_two_models():
    t_tok, s_tok = FAMILIES["bpe4096"](), FAMILIES["bpe300"]()
    teacher, student = tiny_llama(t_tok, max_seq_len=64), tiny_llama(s_tok, seed=1, max_seq_len=64)
    agree, count = model_agreement(teacher, t_tok, student, s_tok, [TEXT, *HARD_TEXTS], row_tokens=24, max_rows=3)
    assert 0 <= agree <= count and count > 10
    more = model_agreement(teacher, t_tok, student, s_tok, [TEXT, *HARD_TEXTS], row_tokens=24, max_rows=6)
    assert more[1] > count  # more rows, more positions
