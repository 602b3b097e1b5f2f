"""The tokenizer in the GGUF metadata, as llama.cpp's converter writes a byte-level BPE
(``TextModel._set_vocab_gpt2`` and ``get_vocab_base``): model ``gpt2``, a pre-tokenizer name
llama.cpp knows, one token string and type per id of the embedding (ids the tokenizer does not use
padded as ``[PAD<id>]``, type UNUSED), the merges, the special token ids, whether BOS/EOS are added,
and the chat template. ``gguf.SpecialVocab`` reads merges, special ids and the template from
``tokenizer.json`` / ``tokenizer_config.json`` / ``chat_template.jinja``, as the converter does.

The pre-tokenizer (how text is split before BPE) must be one llama.cpp implements: it is named,
not described, in the file. distill's own tokenizers (``distill/data/tokenizer.py``) are GPT-2's
byte-level split (``gpt-2``); Llama 3's and Qwen2's regex splits are recognised too.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.errors import DistillError

# tokenizers' Split regex -> llama.cpp's pre-tokenizer name (llama-vocab.cpp: LLAMA_VOCAB_PRE_TYPE_*)
SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or a DistillError naming what it found."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space", False):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PATTERNS:
            return SPLIT_PATTERNS[pattern]
    raise DistillError(
        f"GGUF export: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one llama.cpp "
        "implements under a known name; supported: byte-level BPE (GPT-2 split, as distill trains), Llama 3, Qwen2"
    )


def add_vocab(writer, tokenizer_dir: Path, vocab_size: int) -> dict:
    """Write the tokenizer keys; returns a summary (token count, pre-tokenizer, special ids) for the log."""
    import gguf
    from transformers import AutoTokenizer

    from distill.safety import pretrained_kwargs

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise DistillError(
            f"GGUF export: {tokenizer_dir} has no tokenizer.json; the export writes byte-level BPE tokenizers "
            "(tokenizer.json), not SentencePiece models"
        )
    spec = json.loads(path.read_text())
    if (spec.get("model") or {}).get("type") != "BPE":
        raise DistillError(f"GGUF export: tokenizer model {(spec.get('model') or {}).get('type')} is not BPE")
    pre = pre_tokenizer_name(spec)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), **pretrained_kwargs())
    vocab = tok.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise DistillError(
            f"GGUF export: the tokenizer has ids up to {max(vocab.values())} but the model's vocabulary is {vocab_size}"
        )
    reverse = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise DistillError(f"GGUF export: no BPE merges found in {path}")
    # llama.cpp adds BOS by default for some pre-tokenizers; say what the HF tokenizer does
    probe = tok("a")["input_ids"]
    special.add_special_token.setdefault("bos", tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id])
    special.add_special_token.setdefault("eos", tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id])
    special.add_to_gguf(writer, quiet=True)
    return {
        "tokens": vocab_size,
        "pre": pre,
        "merges": len(special.merges),
        "special": dict(special.special_token_ids),
        "chat_template": special.chat_template is not None,
    }
