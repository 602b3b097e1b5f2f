"""What a chat model answers to held-out prompts, judged without a judge model.

Each validation conversation's prompt (everything before its last assistant turn) is answered
greedily; the reference is that turn as the data has it. For code answers (``data=stdlib_instruct``)
two checks are exact and cheap: does the answer compile as Python (``compile()``, never run), and
is its first line (the ``def`` line) the reference's. Response-token perplexity needs no
generation: validation rows target the assistant's tokens only, so ``val_ppl`` on chat data is it.
"""

from __future__ import annotations

import ast
from types import SimpleNamespace

import numpy as np
import torch

from distill.on_policy import answer_rows


def compiles(code: str) -> bool:
    """Does ``code`` hold at least one Python statement and compile? An empty, blank or
    comment-only answer compiles (``compile("")`` succeeds) but answers nothing, so it fails."""
    try:
        holds_code = bool(ast.parse(code).body)
        compile(code, "<answer>", "exec")  # ast.parse misses some compile-time errors ('return' outside def)
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
        return False
    return holds_code


def is_empty(text: str) -> bool:
    return not text.strip()


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def reference_answers(tokenizer, rows: np.ndarray, targets: np.ndarray, prompt_lens: np.ndarray) -> list[str]:
    """Each row's last assistant turn, decoded from its targets (as cut to the row)."""
    out = []
    for row_targets, n in zip(targets, prompt_lens):
        turn = row_targets[n - 1 :]
        end = int(np.argmax(turn == -100)) if (turn == -100).any() else len(turn)
        out.append(tokenizer.decode(turn[:end].tolist(), skip_special_tokens=True))
    return out


@torch.no_grad()
def greedy_answers(model, tokenizer, rows, prompt_lens, *, pad_id, stop_ids, max_new_tokens, device, batch_size=16):
    """``model``'s greedy answer to each row's prompt, decoded (special tokens dropped)."""
    spec = SimpleNamespace(max_new_tokens=max_new_tokens, temperature=0.0)
    out = []
    for start in range(0, len(rows), batch_size):
        inputs = torch.from_numpy(rows[start : start + batch_size, :-1].astype(np.int64)).to(device)
        lens = torch.from_numpy(prompt_lens[start : start + batch_size].astype(np.int64))
        answered, mask = answer_rows(model, inputs, lens, spec, pad_id, stop_ids)
        for row, m, n in zip(answered.cpu().numpy(), mask.cpu().numpy(), lens.tolist()):
            written = row[n : n + int(m.sum())]
            out.append(tokenizer.decode(written.tolist(), skip_special_tokens=True))
    return out


def answer_metrics(models: dict, dm, device, *, max_prompts: int = 64, max_new_tokens: int = 192) -> dict:
    """``<model>.answer_compile_rate`` and ``<model>.answer_first_line_match`` over the first
    ``max_prompts`` validation conversations (``dm``: a ChatDataModule of Python answers)."""
    rows, targets = dm.val_blocks[:max_prompts], dm.val_targets[:max_prompts]
    prompt_lens = dm.val_prompt_lens[:max_prompts]
    references = [first_line(r) for r in reference_answers(dm.tokenizer, rows, targets, prompt_lens)]
    pad, stops = dm.special_ids()
    metrics = {"val.answer_prompts": len(rows)}
    for name, model in models.items():
        answers = greedy_answers(
            model.to(device), dm.tokenizer, rows, prompt_lens, pad_id=pad, stop_ids=stops,
            max_new_tokens=max_new_tokens, device=device,
        )  # fmt: skip
        metrics[f"{name}.answer_compile_rate"] = float(np.mean([compiles(a) for a in answers]))
        metrics[f"{name}.answer_empty_rate"] = float(np.mean([is_empty(a) for a in answers]))
        metrics[f"{name}.answer_first_line_match"] = float(
            np.mean([first_line(a) == r for a, r in zip(answers, references)])
        )
    return metrics
