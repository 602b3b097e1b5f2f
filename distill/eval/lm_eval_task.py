"""Local lm-evaluation-harness tasks built from a run's validation documents (nothing downloaded).

``write_tasks`` writes JSONL data and task YAMLs into a directory that ``lm_eval --include_path``
reads; ``lm_eval_command`` is the command that scores one exported model on them:

* ``<prefix>_ppl``: rolling log-likelihood of whole held-out documents (word/byte perplexity,
  bits per byte: tokenizer-independent, so comparable across tokenizers too);
* ``<prefix>_next_line``: multiple choice, "which of 4 lines really comes next" after 8 lines of
  context (the 3 others are lines of other held-out files), accuracy.

The harness does the scoring, batching and reporting; this module only turns our split into its
task format (its YAML schema: ``dataset_path: json`` + ``dataset_kwargs.data_files``).
"""

from __future__ import annotations

import json
import random
import shlex
from pathlib import Path

from distill.cache import write_atomic

CONTEXT_LINES = 8
CHOICES = 4
MIN_LINE_CHARS = 12  # shorter lines ("else:", "pass") are too often the same in every file to be a fair choice


def ppl_docs(texts: list[str], max_docs: int, max_chars: int) -> list[dict]:
    return [{"text": t[:max_chars]} for t in texts[:max_docs] if t.strip()]


def next_line_docs(texts: list[str], max_items: int, seed: int) -> list[dict]:
    """Items ``{context, choices, label}``; distractors come from other documents, never equal to the answer."""
    rng = random.Random(seed)
    lines = [[ln for ln in t.splitlines()] for t in texts]
    pool = [(d, ln) for d, doc in enumerate(lines) for ln in doc if len(ln.strip()) >= MIN_LINE_CHARS]
    items = []
    candidates = [
        (d, i)
        for d, doc in enumerate(lines)
        for i in range(CONTEXT_LINES, len(doc))
        if len(doc[i].strip()) >= MIN_LINE_CHARS
    ]
    rng.shuffle(candidates)
    for d, i in candidates[:max_items]:
        answer = lines[d][i]
        others = [ln for od, ln in pool if od != d and ln != answer]
        if len(set(others)) < CHOICES - 1:
            break
        choices = rng.sample(sorted(set(others)), CHOICES - 1)
        label = rng.randrange(CHOICES)
        choices.insert(label, answer)
        items.append({"context": "\n".join(lines[d][i - CONTEXT_LINES : i]) + "\n", "choices": choices, "label": label})
    return items


def _yaml(task: str, data: Path, body: dict) -> str:
    spec = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        **body,
        "metadata": {"version": 1.0},
    }
    return json.dumps(spec, indent=2) + "\n"  # JSON is YAML: no yaml writer needed, and no quoting surprises


def write_tasks(
    texts: list[str],
    out_dir: str | Path,
    prefix: str = "distill",
    max_docs: int = 16,
    max_chars: int = 4000,
    max_items: int = 100,
    seed: int = 0,
) -> list[str]:
    """Data files and task YAMLs for ``texts`` (held-out documents) in ``out_dir``; returns the task names."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = {
        f"{prefix}_ppl": (
            ppl_docs(texts, max_docs, max_chars),
            {
                "output_type": "loglikelihood_rolling",
                "doc_to_text": "",
                "doc_to_target": "{{text}}",
                "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
            },
        ),
        f"{prefix}_next_line": (
            next_line_docs(texts, max_items, seed),
            {
                "output_type": "multiple_choice",
                "doc_to_text": "{{context}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{label}}",
                "target_delimiter": "",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            },
        ),
    }
    for name, (rows, body) in tasks.items():
        data = out / f"{name}.jsonl"
        write_atomic(data, "".join(json.dumps(r) + "\n" for r in rows))
        write_atomic(out / f"{name}.yaml", _yaml(name, data, body))
    return list(tasks)


def lm_eval_command(
    model_dir: str | Path,
    tasks: list[str],
    include_path: str | Path,
    output_path: str | Path,
    device: str = "cpu",
    batch_size: int = 8,
) -> list[str]:
    return [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={Path(model_dir).resolve()},dtype=float32",
        "--tasks",
        ",".join(tasks),
        "--include_path",
        str(include_path),
        "--device",
        device,
        "--batch_size",
        str(batch_size),
        "--output_path",
        str(output_path),
    ]


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def read_results(output_path: str | Path) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from the newest results JSON lm_eval wrote under ``output_path``."""
    files = sorted(Path(output_path).rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    results = json.loads(files[-1].read_text())["results"]
    return {
        task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}
        for task, metrics in results.items()
    }
