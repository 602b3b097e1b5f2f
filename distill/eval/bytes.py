"""Tokenizer-free metrics: bits per byte and per character, and top-1 agreement on aligned spans.

Perplexity is per token, so models with different tokenizers are not comparable by it: a model
whose tokens are longer sees fewer, harder tokens. Bits per byte divides the same quantity, the
text's total negative log-likelihood, by what every tokenizer shares: the text's UTF-8 bytes
(bits per character by its characters). Each token of the text is scored exactly once: the first
from the tokenizer's BOS (or EOS) as context, and a text longer than the model's window in windows
that overlap by one token, which serves only as context. No EOS is scored after the text: its
cost would differ between tokenizers and is not part of the text.

A tokenizer that does not reproduce the text (WordPiece lowercases and strips accents) scores a
different text; ``TextScore.lossless`` says whether decoding the tokens gives the text back.

``text_metrics`` is the form a run reports (``<name>.bits_per_byte``, ``<name>.bits_per_char``);
``model_agreement`` runs two models with different tokenizers over rows of text for the top-1
agreement on aligned positions whose tokens are the same string.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.align.batch import AlignedBatch, collate
from distill.align.encode import TextAligner
from distill.align.vocab import VocabMapping, vocab_mapping
from distill.sampling import eval_mode


@dataclass(frozen=True)
class TextScore:
    """A model's summed NLL over texts, and what it is divided by."""

    nll: float = 0.0  # nats, summed over the texts' tokens
    tokens: int = 0
    bytes: int = 0  # UTF-8 bytes of the texts
    chars: int = 0
    lossless: bool = True  # every text decodes back from its tokens

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(1, self.bytes)

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2) / max(1, self.chars)

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2) / max(1, self.tokens)

    def __add__(self, other: TextScore) -> TextScore:
        return TextScore(
            self.nll + other.nll,
            self.tokens + other.tokens,
            self.bytes + other.bytes,
            self.chars + other.chars,
            self.lossless and other.lossless,
        )


def context_id(tokenizer) -> int:
    """The token a text is predicted from: BOS where the tokenizer has one, else EOS (documents
    are packed after an EOS, ``distill.data.packing``)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither BOS nor EOS: nothing to predict a text's first token from")
    return int(token)


def windows(ids: list[int], context: int, max_length: int) -> list[list[int]]:
    """``[context, *ids]`` cut into windows of at most ``max_length`` tokens, each after the first
    starting with the previous window's last token: every id is a target exactly once."""
    seq, step = [context, *ids], max(1, max_length - 1)
    return [seq[i : i + step + 1] for i in range(0, max(1, len(seq) - 1), step)]


WINDOWS_PER_PASS = 8  # windows scored in one forward pass: bounds the logits' memory on long texts


def model_window(model) -> int:
    """The most tokens the model takes at once (its position table; 2048 when it does not say)."""
    return getattr(model.config, "max_position_embeddings", None) or 2048


@torch.no_grad()
def score_text(
    model,
    tokenizer,
    text: str,
    *,
    max_length: int | None = None,
    vocab_size: int | None = None,
    batch_size: int = WINDOWS_PER_PASS,
) -> TextScore:
    """The model's summed NLL of ``text`` under its tokenizer (see the module doc); windows of at
    most ``max_length`` tokens and of the model's ``max_position_embeddings``, ``batch_size``
    windows per forward pass."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return TextScore(bytes=len(text.encode()), chars=len(text))
    window = min(max_length or model_window(model), model_window(model))  # never past its position table
    chunks = windows(ids, context_id(tokenizer), window)
    vocab = vocab_size or len(tokenizer)
    nll = sum(_windows_nll(model, chunks[i : i + batch_size], vocab) for i in range(0, len(chunks), batch_size))
    lossless = tokenizer.decode(ids) == text
    return TextScore(float(nll), len(ids), len(text.encode()), len(text), lossless)


def _windows_nll(model, chunks: list[list[int]], vocab: int) -> float:
    """Summed NLL of the windows' targets (each window's tokens after its first)."""
    width = max(len(c) for c in chunks)
    device = next(model.parameters()).device
    inputs = torch.full((len(chunks), width), int(chunks[0][0]), dtype=torch.long, device=device)
    targets = torch.full((len(chunks), width), -100, dtype=torch.long, device=device)
    for i, chunk in enumerate(chunks):  # right padding: a causal model's earlier positions never see it
        inputs[i, : len(chunk)] = torch.tensor(chunk)
        targets[i, : len(chunk) - 1] = torch.tensor(chunk[1:])
    logits = model(input_ids=inputs, use_cache=False).logits[..., :vocab].float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum").item()


def score_texts(model, tokenizer, texts: list[str], **kwargs) -> TextScore:
    total = TextScore()
    for text in texts:
        total = total + score_text(model, tokenizer, text, **kwargs)
    return total


@torch.no_grad()
def aligned_top1_agreement(
    student_logits: Tensor, teacher_logits: Tensor, batch: AlignedBatch, mapping: VocabMapping
) -> tuple[int, int]:
    """(agreements, positions): on aligned spans of one token each whose two tokens are the same
    string (the positions where both models predict the same thing), how often the teacher's most
    likely token, mapped into the student's vocabulary, is the student's most likely token."""
    to_student = torch.as_tensor(mapping.teacher_to_student, device=student_logits.device)
    t_first, s_first = batch.teacher.first_ids, batch.student.first_ids
    same = batch.one_to_one & (to_student[t_first] == s_first) & (batch.weight > 0)
    s_rows, t_rows = batch.student.rows[same], batch.teacher.rows[same]
    s_top = student_logits.reshape(-1, student_logits.shape[-1])[s_rows].argmax(-1)
    t_top = teacher_logits.reshape(-1, teacher_logits.shape[-1])[t_rows].argmax(-1)
    return int((to_student[t_top] == s_top).sum()), int(same.sum())


def text_scores(models: dict, texts: list[str], device=None, max_length: int | None = None) -> dict[str, TextScore]:
    """``models``: {name: (model, tokenizer)}; each model's ``score_texts`` of the same texts under
    its own tokenizer, in eval mode (its mode is restored after). ``device``: where the model runs,
    moved there if it is not already (a no-op when the caller has)."""
    out = {}
    for name, (model, tokenizer) in models.items():
        if device is not None:
            model.to(device)
        with eval_mode(model):
            out[name] = score_texts(model, tokenizer, texts, max_length=max_length)
    return out


def text_metrics(models: dict, texts: list[str], device=None, max_length: int | None = None) -> dict[str, float]:
    """models: {name: (model, tokenizer)}. Returns {f"{name}.bits_per_byte": ..., f"{name}.bits_per_char": ...}
    for every model, each scored on the same texts under its own tokenizer (score_texts)."""
    metrics = {}
    for name, score in text_scores(models, texts, device, max_length).items():
        metrics[f"{name}.bits_per_byte"] = score.bits_per_byte
        metrics[f"{name}.bits_per_char"] = score.bits_per_char
    return metrics


def leading_text(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """The texts in order as far as ``max_tokens`` of the tokenizer's tokens reach (one more per text
    for the EOS that follows it when packed), the last one cut where its last counted token ends."""
    out, left = [], max_tokens
    for text in texts:
        if left <= 0:
            break
        cut = cut_to_tokens(text, tokenizer, left)
        out.append(cut)
        left -= len(tokenizer(cut, add_special_tokens=False)["input_ids"]) + 1
    return out


def validation_text(dm) -> list[str]:
    """The text every model's bits per byte is scored on: the validation documents in order, as far
    as the validation rows' tokens under the reference tokenizer reach (``data.max_val_blocks`` rows
    of ``data.seq_len + 1``: for packed text, the very text those rows hold). Prompt/response data
    has no documents: its validation examples as the rows render them (prompt template + response)."""
    texts = [d.text for d in getattr(dm, "val_docs", None) or []]
    if not texts and getattr(dm, "val_examples", None):
        texts = [dm.template.format(prompt=e.prompt) + e.response for e in dm.val_examples]
    return leading_text(texts, dm.tokenizer, int(dm.val_blocks.size))


def cut_to_tokens(text: str, tokenizer, n: int) -> str:
    """The start of ``text`` that its first ``n`` tokens cover (all of it when it has no more). A
    slow tokenizer reports no character offsets: its cut is proportional to the characters."""
    if not getattr(tokenizer, "is_fast", False):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= n else text[: len(text) * n // len(ids)]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if len(offsets) <= n else text[: offsets[n - 1][1]]


def text_rows(texts: list[str], tokenizer, n: int) -> Iterator[str]:
    """Each text in consecutive pieces of ``n`` of the tokenizer's tokens (the last one shorter)."""
    for text in texts:
        while text:
            head = cut_to_tokens(text, tokenizer, n) or text  # a zero-width first token: the rest at once
            yield head
            text = text[len(head) :]


@torch.no_grad()
def model_agreement(
    teacher, teacher_tokenizer, student, student_tokenizer, texts: list[str], *, row_tokens: int, max_rows: int
) -> tuple[int, int]:
    """(agreements, positions): ``aligned_top1_agreement`` of two models with different tokenizers
    over the first ``max_rows`` rows of ``text_rows`` (``row_tokens`` teacher tokens each, with the
    EOS the aligner adds), so both sides read the same characters. A row's first token has no
    context and is not counted."""
    aligner = TextAligner(teacher_tokenizer, student_tokenizer)
    mapping = vocab_mapping(teacher_tokenizer, student_tokenizer)
    row_tokens = min(row_tokens, model_window(teacher))
    agree = count = 0
    for row in itertools.islice(text_rows(texts, teacher_tokenizer, row_tokens - 1), max_rows):
        t, s, alignment = aligner.align([row], teacher_len=row_tokens, student_len=model_window(student))
        s_logits = _row_logits(student, s.ids, mapping.student_size)
        t_logits = _row_logits(teacher, t.ids, mapping.teacher_size).to(s_logits.device)
        batch = collate([alignment], len(t.ids), len(s.ids)).to(s_logits.device)
        a, n = aligned_top1_agreement(s_logits, t_logits, batch, mapping)
        agree, count = agree + a, count + n
    return agree, count


def _row_logits(model, ids, vocab: int) -> Tensor:
    """[1, n, vocab] logits of one row (rows past the tokenizer's vocabulary, padding, cut off)."""
    inputs = torch.as_tensor(ids, dtype=torch.long, device=next(model.parameters()).device)[None]
    with eval_mode(model):
        return model(input_ids=inputs, use_cache=False).logits[..., :vocab].float()


def tokenizer_free(
    models: dict, reference: str, shared: list[str], texts: list[str], row_tokens: int, agreement_rows: int
) -> dict[str, dict]:
    """Per model of ``models`` ({name: (model, tokenizer)}): bits per byte and per character of
    ``texts`` (windows of ``row_tokens`` of its own tokens) and its bytes per token; for a model not
    in ``shared`` (the reference's tokenization), top-1 agreement with the reference on aligned
    same-string positions over the first ``agreement_rows`` rows of the texts (``model_agreement``)."""
    out = {}
    ref_model, ref_tok = models[reference]
    for name, score in text_scores(models, texts, max_length=row_tokens).items():
        out[name] = {
            "bits_per_byte": score.bits_per_byte,
            "bits_per_char": score.bits_per_char,
            "bytes_per_token": score.bytes / max(1, score.tokens),
            "text_lossless": score.lossless,
        }
        if name not in shared:
            model, tok = models[name]
            agree, count = model_agreement(
                ref_model, ref_tok, model, tok, texts, row_tokens=row_tokens, max_rows=agreement_rows
            )
            out[name].update(aligned_top1_agreement=agree / max(1, count), aligned_positions=count)
    return out
