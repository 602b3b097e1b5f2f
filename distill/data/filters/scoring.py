"""Model-based document scores: a teacher-perplexity band and MiniPLM's reference ratio.

Both stages are global: ``prepare`` runs a scoring pass (``ctx.run``) whose step writes each shard's
``{doc_id: [mean NLL under model 1, model 2, ...]}`` to ``work_dir/scores/<rank>.json``, merges the
shards, decides, and writes ``work_dir/decisions.json``; ``steps`` is the ``DecisionFilter`` over it.

The scores themselves (mean NLL of a text under a causal LM) come from ``lm_nll.py``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from transformers import AutoConfig, AutoTokenizer

from distill.cache import write_atomic
from distill.data.filters.lm_nll import encode, score_ids
from distill.data.filters.stage import DecisionFilter, FilterContext, FilterStage, write_decisions
from distill.errors import DistillError
from distill.safety import pretrained_kwargs
from distill.teacher.load import check_model_dir, load_causal_lm

log = logging.getLogger(__name__)


def write_json(path: Path, obj) -> None:
    """Atomic: a rerun that skips this shard never finds half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(obj))


def read_scores(scores_dir: Path, tasks: int) -> dict:
    """Every shard's ``{doc_id: value}`` merged; a missing shard means the scoring pass failed."""
    merged = {}
    for rank in range(tasks):
        path = Path(scores_dir) / f"{rank}.json"
        if not path.is_file():
            raise RuntimeError(f"the scoring pass wrote no scores for shard {rank} ({path})")
        merged.update(json.loads(path.read_text()))
    return merged


class ShardScorer(PipelineStep):
    """Scores every document of its shard and writes ``{doc_id: score}`` to ``out_dir/<rank>.json``.

    Subclasses load their model in ``load`` (called once per process, so the step pickles as a few
    paths for any executor) and score a list of texts in ``score``. Yields nothing: a scoring pass
    only writes scores."""

    type = "📊 - SCORER"
    name = "scorer"
    chunk = 1024  # documents sorted by length together: larger chunks pad less

    def __init__(self, out_dir: str | Path):
        super().__init__()
        self.out_dir = str(out_dir)

    def load(self) -> None:
        pass

    def score(self, texts: list[str]) -> list:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.load()
        scores = {}
        for docs in batched(data, self.chunk):
            with self.track_time("chunk"):
                values = self.score([d.text for d in docs])
            scores.update(zip((d.id for d in docs), values))
            self.stat_update("scored", value=len(docs))
        write_json(Path(self.out_dir) / f"{rank}.json", scores)
        yield from ()


def _nan_to_none(x: float):
    return None if math.isnan(x) else x  # strict JSON has no NaN


class LMScorer(ShardScorer):
    """``[mean NLL under each model]`` per document; every model reads the same token ids."""

    name = "lm nll"

    def __init__(
        self,
        out_dir,
        model_paths: list[str],
        tokenizer_path: str,
        device: str = "cpu",
        batch_size: int = 8,
        max_tokens: int = 512,
        bf16: bool = False,
    ):
        super().__init__(out_dir)
        self.model_paths, self.tokenizer_path = [str(p) for p in model_paths], str(tokenizer_path)
        self.device, self.batch_size, self.max_tokens, self.bf16 = device, batch_size, max_tokens, bf16
        self._models = None

    def load(self) -> None:
        if self._models is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path, **pretrained_kwargs())
            self._models = [load_causal_lm(p, "filter model").to(self.device).eval() for p in self.model_paths]
            contexts = [getattr(m.config, "max_position_embeddings", None) or self.max_tokens for m in self._models]
            self._max_tokens = min([self.max_tokens, *contexts])

    def score(self, texts: list[str]) -> list[list]:
        seqs = encode(self._tokenizer, texts, self._max_tokens)
        per_model = [score_ids(m, seqs, self.batch_size, self.bf16) for m in self._models]
        return [[_nan_to_none(s) for s in doc] for doc in zip(*per_model)]


def score_corpus(
    ctx: FilterContext,
    input_dir: Path,
    pass_name: str,
    model_paths: list[str],
    tokenizer_path: str,
    batch_size: int,
    max_tokens: int,
    bf16: bool,
) -> dict[str, list[float]]:
    """``{doc_id: [NLL per model]}`` for the whole corpus (None -> NaN), by a ``ctx.run`` pass."""
    scores_dir = Path(ctx.work_dir) / "scores"
    step = LMScorer(scores_dir, model_paths, tokenizer_path, ctx.device, batch_size, max_tokens, bf16)
    ctx.run([step], pass_name, input_dir)
    raw = read_scores(scores_dir, ctx.tasks)
    return {k: [float("nan") if x is None else x for x in v] for k, v in raw.items()}


# --- model paths ----------------------------------------------------------------------------------


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def resolve_model(ctx: FilterContext, model_path: str | None, stage: str) -> tuple[str, str]:
    """(model dir, tokenizer dir): the stage's own model, else the run's teacher; its tokenizer,
    else the run's tokenizer."""
    path = model_path or ctx.teacher_path
    if not path:
        raise DistillError(f"data.filters.{stage}: no model: set model_path or the run's teacher.path")
    path = str(check_model_dir(path, f"data.filters.{stage}.model_path"))
    tokenizer = path if has_tokenizer(path) else ctx.tokenizer_path
    if not tokenizer:
        raise DistillError(f"data.filters.{stage}: {path} has no tokenizer and the run has no tokenizer_path")
    return path, str(tokenizer)


def _check_sizes(stage: str, batch_size: int, max_tokens: int) -> None:
    if int(batch_size) < 1 or int(max_tokens) < 2:
        raise DistillError(
            f"data.filters.{stage}: need batch_size >= 1 and max_tokens >= 2, got {batch_size} and {max_tokens}"
        )


# --- stages -------------------------------------------------------------------------------------


def band_decisions(nll: dict[str, float], low: float, high: float) -> tuple[dict[str, str], tuple[float, float]]:
    """Drop documents outside the [low, high] percentile band of the scored (non-NaN) ones."""
    scored = {k: v for k, v in nll.items() if not math.isnan(v)}
    if not scored:
        return {}, (float("nan"), float("nan"))
    lo, hi = np.percentile(list(scored.values()), [low, high]).tolist()
    decisions = {k: "ppl_below_band" for k, v in scored.items() if v < lo}
    decisions.update({k: "ppl_above_band" for k, v in scored.items() if v > hi})
    return decisions, (lo, hi)


class TeacherPerplexity(FilterStage):
    """Keep the documents whose teacher perplexity lies in a percentile band.

    Both tails are dropped, as in CCNet (Wenzek et al. 2020), which buckets Common Crawl by the
    perplexity of a Wikipedia LM: very low perplexity is mostly boilerplate, repeated lines and
    templated pages, very high is noise (markup, tables of numbers, other languages). Ankner et al.
    2024 ("Perplexed by Perplexity") show that pruning by a small reference model's perplexity can
    improve a much larger model trained on the rest, and that which band helps depends on the
    corpus: hence both percentiles are settings. Documents with nothing to predict (empty after
    tokenization) are kept; other filters judge those."""

    name = "teacher_ppl"
    needs_prepare = True
    uses_model = True
    scores_with_teacher = True  # no model_path: the run's teacher scores

    def __init__(
        self,
        low_percentile: float = 10.0,
        high_percentile: float = 90.0,
        model_path: str | None = None,
        batch_size: int = 8,
        max_tokens: int = 512,
        bf16: bool = False,
    ):
        if not 0.0 <= float(low_percentile) < float(high_percentile) <= 100.0:
            raise DistillError(
                f"data.filters.teacher_ppl: need 0 <= low_percentile < high_percentile <= 100, "
                f"got {low_percentile} and {high_percentile}"
            )
        _check_sizes(self.name, batch_size, max_tokens)
        self.low_percentile, self.high_percentile = float(low_percentile), float(high_percentile)
        self.model_path, self.batch_size, self.max_tokens, self.bf16 = (
            model_path,
            int(batch_size),
            int(max_tokens),
            bf16,
        )

    def prepare(self, ctx: FilterContext, input_dir: Path) -> None:
        model, tokenizer = resolve_model(ctx, self.model_path, self.name)
        nll = {
            k: v[0]
            for k, v in score_corpus(
                ctx, input_dir, f"{self.name}_score", [model], tokenizer, self.batch_size, self.max_tokens, self.bf16
            ).items()
        }
        decisions, (lo, hi) = band_decisions(nll, self.low_percentile, self.high_percentile)
        write_decisions(Path(ctx.work_dir) / "decisions.json", decisions)
        # NLL is log-perplexity: the band's edges in perplexity, for the log and the run's records.
        summary = dict(docs=len(nll), dropped=len(decisions), ppl_low=math.exp(lo), ppl_high=math.exp(hi))
        write_json(Path(ctx.work_dir) / "summary.json", summary)
        log.info(
            "teacher_ppl: kept perplexity band [%.4g, %.4g], dropped %d of %d documents",
            summary["ppl_low"],
            summary["ppl_high"],
            len(decisions),
            len(nll),
        )

    def steps(self, ctx: FilterContext) -> list[PipelineStep]:
        return [DecisionFilter(Path(ctx.work_dir) / "decisions.json")]


def check_same_vocab(tokenizer_path: str, reference_path: str) -> None:
    """The reference must read the teacher's token ids: the same vocabulary if it ships a tokenizer,
    else an embedding table that covers every id of the teacher's tokenizer."""
    teacher_vocab = AutoTokenizer.from_pretrained(tokenizer_path, **pretrained_kwargs()).get_vocab()
    if has_tokenizer(reference_path):
        ref_vocab = AutoTokenizer.from_pretrained(reference_path, **pretrained_kwargs()).get_vocab()
        if ref_vocab != teacher_vocab:
            differ = len(set(ref_vocab.items()) ^ set(teacher_vocab.items()))
            raise DistillError(
                f"data.filters.reference_ratio: the reference model {reference_path} has a different "
                f"vocabulary from the teacher's tokenizer {tokenizer_path} ({len(ref_vocab)} vs "
                f"{len(teacher_vocab)} tokens, {differ} entries differ); it must share the tokenizer"
            )
        return
    rows = AutoConfig.from_pretrained(reference_path, **pretrained_kwargs()).vocab_size
    if rows < max(teacher_vocab.values()) + 1:
        raise DistillError(
            f"data.filters.reference_ratio: the reference model {reference_path} has {rows} embedding "
            f"rows, fewer than the {len(teacher_vocab)} tokens of the teacher's tokenizer"
        )


def top_fraction(score: dict[str, float], keep_fraction: float) -> dict[str, str]:
    """Drop all but the ``keep_fraction`` highest-scoring (non-NaN) documents; ties by id."""
    scored = sorted(((-v, k) for k, v in score.items() if not math.isnan(v)))
    keep = math.ceil(round(keep_fraction * len(scored), 6))
    return {k: "reference_ratio" for _, k in scored[keep:]}


class ReferenceRatio(FilterStage):
    """MiniPLM's difference sampling (Gu et al. 2024, "MiniPLM: Knowledge Distillation for
    Pre-Training Language Models"): score each document by log p_teacher(x) - log p_reference(x)
    (mean per token here, so long documents are not favoured) with a small reference model of the
    same tokenizer, and keep the top ``keep_fraction``. High scores are what the large teacher
    knows and the small model does not: the knowledge worth distilling. Easy text both models
    predict well and noise neither predicts score near zero or below and are dropped."""

    name = "reference_ratio"
    needs_prepare = True
    uses_model = True
    scores_with_teacher = True

    def __init__(
        self,
        reference_path: str | None = None,
        keep_fraction: float = 0.5,
        model_path: str | None = None,
        batch_size: int = 8,
        max_tokens: int = 512,
        bf16: bool = False,
    ):
        if not reference_path:
            raise DistillError(
                "data.filters.reference_ratio: reference_path is required (a small causal LM "
                "directory sharing the teacher's tokenizer)"
            )
        check_model_dir(reference_path, "data.filters.reference_ratio.reference_path")
        if not 0.0 < float(keep_fraction) <= 1.0:
            raise DistillError(f"data.filters.reference_ratio: keep_fraction must be in (0, 1], got {keep_fraction}")
        _check_sizes(self.name, batch_size, max_tokens)
        self.reference_path, self.keep_fraction, self.model_path = str(reference_path), float(keep_fraction), model_path
        self.batch_size, self.max_tokens, self.bf16 = int(batch_size), int(max_tokens), bf16

    def prepare(self, ctx: FilterContext, input_dir: Path) -> None:
        model, tokenizer = resolve_model(ctx, self.model_path, self.name)
        check_same_vocab(tokenizer, self.reference_path)
        nll = score_corpus(
            ctx,
            input_dir,
            f"{self.name}_score",
            [model, self.reference_path],
            tokenizer,
            self.batch_size,
            self.max_tokens,
            self.bf16,
        )
        ratio = {k: ref - teacher for k, (teacher, ref) in nll.items()}  # = log p_t - log p_ref per token
        decisions = top_fraction(ratio, self.keep_fraction)
        write_decisions(Path(ctx.work_dir) / "decisions.json", decisions)
        log.info(
            "reference_ratio: kept the top %.0f%%, dropped %d of %d documents",
            100 * self.keep_fraction,
            len(decisions),
            len(ratio),
        )

    def steps(self, ctx: FilterContext) -> list[PipelineStep]:
        return [DecisionFilter(Path(ctx.work_dir) / "decisions.json")]
