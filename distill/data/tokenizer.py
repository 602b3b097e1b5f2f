"""BPE tokenizers trained on the training split, saved in Hugging Face format.

Three styles, as today's model families ship them: byte-level BPE split by GPT-2's pattern (the
default), byte-level BPE split by Llama 3's pattern (Llama 3; Qwen2 differs only in splitting digits
one by one), and SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma), which a student
from such a family brings to cross-tokenizer distillation. `tokenizers` does the training (seconds on
the stdlib); we only wrap it so that the exported student loads with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from distill.safety import pretrained_kwargs

EOS = "<|endoftext|>"
STYLES = ("byte_level", "llama3", "sentencepiece")
# Llama 3's pre-tokenizer pattern (its tokenizer.json, as tiktoken's cl100k_base): English contractions,
# a letter run with one leading non-letter, digits in groups of up to 3, punctuation runs with the
# newlines after them, newline runs with the spaces before them, then spaces
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def train_bpe(
    texts: list[str],
    vocab_size: int,
    out_dir: Path,
    special_tokens: list[str] | None = None,
    pattern: str | None = None,
) -> None:
    """``special_tokens`` (e.g. a chat template's ``<|im_start|>``) are kept whole, never merged or split.
    ``pattern``: the pre-tokenizer's split instead of GPT-2's (``LLAMA3_PATTERN``), before the bytes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pattern is not None:
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, *(special_tokens or [])],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    hf.save_pretrained(str(out_dir))


def train_llama3_bpe(texts, vocab_size: int, out_dir: Path) -> None:
    """Byte-level BPE split as Llama 3 splits text (``LLAMA3_PATTERN``)."""
    train_bpe(texts, vocab_size, out_dir, pattern=LLAMA3_PATTERN)


def train_sentencepiece_bpe(texts, vocab_size: int, out_dir: Path) -> None:
    """SentencePiece-style BPE (as converted from Llama 2's or Gemma's ``tokenizer.model``): spaces are
    '▁', a character outside the vocabulary is spelled as its UTF-8 bytes (``<0x00>``..``<0xFF>``
    pieces), and pieces split as SentencePiece's trainer splits them (``split_by_whitespace`` with
    whitespace-only pieces allowed, Llama 2's settings): a word with the one '▁' before it ('▁return'),
    or a run of '▁' (indentation). Without that split, BPE training on whole documents of code
    would merge across words (and take minutes on the stdlib)."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581+(?=\u2581)|\u2581?[^\u2581]+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    # the byte pieces were passed as special tokens only to reserve them a place in the vocabulary:
    # in SentencePiece-converted tokenizers they are ordinary entries, decoded as bytes
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [a for a in spec["added_tokens"] if not a["content"].startswith("<0x")]
    tok = Tokenizer.from_str(json.dumps(spec))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    hf.save_pretrained(str(out_dir))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(str(path), **pretrained_kwargs())
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} has no EOS token; documents cannot be separated")
    return tok
