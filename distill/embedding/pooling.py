"""Sentence embeddings from an encoder's token states, as sentence-transformers computes them.

The teacher's pooling is read from its sentence-transformers files (``modules.json``,
``1_Pooling/config.json``), never repeated in config; the student is pooled the same way and
exported with the same files, so ``SentenceTransformer(student_dir)`` encodes as we measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError

MODES = ("mean", "cls")


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"  # mean over real tokens | cls (the first token)
    normalize: bool = True  # L2-normalise the sentence embedding (a Normalize module follows pooling)

    def __post_init__(self):
        if self.mode not in MODES:
            raise DistillError(f"pooling must be one of {', '.join(MODES)}, got {self.mode!r}")

    def __call__(self, token_states: Tensor, attention_mask: Tensor) -> Tensor:
        return pool(token_states, attention_mask, self.mode, self.normalize)


def pool(token_states: Tensor, attention_mask: Tensor, mode: str = "mean", normalize: bool = True) -> Tensor:
    """``[B, T, d]`` token states -> ``[B, d]`` float32 sentence embeddings; padding never counts."""
    h = token_states.float()
    if mode == "cls":
        out = h[:, 0]
    else:
        mask = attention_mask.to(h.dtype).unsqueeze(-1)
        out = (h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # sentence-transformers' clamp
    return F.normalize(out, dim=-1) if normalize else out


def read_pooling(model_dir: str | Path, mode: str = "auto", normalize: str | bool = "auto") -> Pooling:
    """The pooling a sentence-transformers directory declares; ``auto`` fields come from its files
    (a plain HF directory: mean pooling, normalised, the usual sentence-encoder recipe)."""
    model_dir = Path(model_dir)
    modules = _json(model_dir / "modules.json") or []
    pooling_dir = next((m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling")
    config = _json(model_dir / pooling_dir / "config.json") or {}
    if mode == "auto":
        mode = "cls" if config.get("pooling_mode_cls_token") and not config.get("pooling_mode_mean_tokens") else "mean"
    if normalize == "auto":
        normalize = not modules or any(m.get("type", "").endswith(".Normalize") for m in modules)
    return Pooling(mode=mode, normalize=bool(normalize))


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def sentence_embeddings(
    model, input_ids: Tensor, attention_mask: Tensor, pooling: Pooling, hidden_states: bool = False
):
    """Run an HF encoder; returns (sentence embeddings, per-layer hidden states or None)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden_states)
    return pooling(out.last_hidden_state, attention_mask), (out.hidden_states if hidden_states else None)


@torch.no_grad()
def encode(model, batches, pooling: Pooling, autocast_dtype: torch.dtype | None = None) -> Tensor:
    """Embeddings of every ``(input_ids, attention_mask)`` batch, in order, eval mode, float32."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for ids, mask in batches:
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                emb, _ = sentence_embeddings(model, ids.to(device), mask.to(device), pooling)
            out.append(emb.float().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)
