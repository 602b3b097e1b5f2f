"""Byte-level BPE trained on the training split, saved in Hugging Face format.

`tokenizers` does the training (seconds on the stdlib); we only wrap it so that the
exported student loads with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from distill.safety import pretrained_kwargs

EOS = "<|endoftext|>"


def train_bpe(texts: list[str], vocab_size: int, out_dir: Path, special_tokens: list[str] | None = None) -> None:
    """``special_tokens`` (e.g. a chat template's ``<|im_start|>``) are kept whole, never merged or split."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(str(path), **pretrained_kwargs())
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} has no EOS token; documents cannot be separated")
    return tok
