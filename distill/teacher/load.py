"""Load a user's local Hugging Face causal LM and its tokenizer, with checks that fail early."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from distill.errors import DistillError
from distill.safety import pretrained_kwargs, weight_kwargs


def check_model_dir(path: str | Path, what: str = "teacher.path") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DistillError(f"{what} does not exist: {p}")
    if not (p / "config.json").is_file():
        raise DistillError(f"{what} is not a Hugging Face model directory (no config.json): {p}")
    try:
        AutoConfig.from_pretrained(str(p), **pretrained_kwargs())
    except Exception as e:
        raise DistillError(f"{what}: cannot read the model config in {p} ({type(e).__name__}: {e})") from e
    return p


def load_causal_lm(path: str | Path, what: str = "teacher.path") -> PreTrainedModel:
    p = check_model_dir(path, what)
    kwargs = weight_kwargs(p, what)  # safetensors only, unless allow_pickle
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype="float32", **kwargs)
    except Exception as e:
        raise DistillError(f"{what}: cannot load a causal LM from {p} ({type(e).__name__}: {e})") from e
    return model


def check_tokenizer_dir(path: str | Path, what: str = "teacher.path") -> None:
    """The model dir must carry its tokenizer (the student learns in the teacher's vocabulary)."""
    from distill.data.tokenizer import load_tokenizer

    try:
        load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 - any failure here is "no usable tokenizer", in one line
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:200]
        raise DistillError(f"{what}: no usable tokenizer in {path} ({first})") from e


def check_context(path: str | Path, seq_len: int | None, what: str = "teacher.path") -> None:
    """Blocks longer than the model's position table would index past it (or silently degrade)."""
    config = AutoConfig.from_pretrained(str(path), **pretrained_kwargs())
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and seq_len is not None and seq_len > limit:
        raise DistillError(
            f"data.seq_len={seq_len} is longer than {what}'s maximum positions ({limit}); use data.seq_len<={limit}"
        )
