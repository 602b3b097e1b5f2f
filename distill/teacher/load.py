"""Load a user's local Hugging Face causal LM and its tokenizer, with checks that fail early."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from distill.errors import DistillError


def check_model_dir(path: str | Path, what: str = "teacher.path") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DistillError(f"{what} does not exist: {p}")
    if not (p / "config.json").is_file():
        raise DistillError(f"{what} is not a Hugging Face model directory (no config.json): {p}")
    try:
        AutoConfig.from_pretrained(str(p))
    except Exception as e:
        raise DistillError(f"{what}: cannot read the model config in {p} ({type(e).__name__}: {e})") from e
    return p


def load_causal_lm(path: str | Path, what: str = "teacher.path") -> PreTrainedModel:
    p = check_model_dir(path, what)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype="float32")
    except Exception as e:
        raise DistillError(f"{what}: cannot load a causal LM from {p} ({type(e).__name__}: {e})") from e
    return model
