"""Settings each valid alone but not together, checked before the walk over every key: the task and its
objective. An objective's keys only mean something for its own task, so a causal preset under
``task: embedding`` is named as the wrong preset, not as a list of unknown keys."""

from __future__ import annotations

from distill.errors import DistillError

EMBEDDING_OBJECTIVES = "distill.embedding."  # the module tree of the sentence-encoder objectives


def check_task_objective(values: dict) -> None:
    task = values.get("task", "causal_lm")
    loss = values.get("loss")
    target = str(loss.get("_target_", "")) if isinstance(loss, dict) else ""
    if not target:
        return
    if task == "embedding" and not target.startswith(EMBEDDING_OBJECTIVES):
        raise DistillError("task=embedding trains with the embedding objective: use loss=embedding")
    if task == "causal_lm" and target.startswith(EMBEDDING_OBJECTIVES):
        raise DistillError(
            "loss=embedding is the sentence-encoder objective (task=embedding, e.g. "
            "experiment=minilm_embed); task=causal_lm trains with loss=forward_kl or another preset"
        )
