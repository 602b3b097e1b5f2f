"""Sequence-level KD from prompts (the self-instruct pipeline with a local teacher): the teacher
answers each training conversation's real prompt once (greedy, or sampled and seeded), and the
student trains with CE on those answers. Generation is the slow part: it is cached in chunks of
``chunk_rows`` conversations under a key of everything that made them, so an interrupted run
resumes at the last finished chunk. Validation stays on the real conversations.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from distill.cache import cached_dir, fingerprint
from distill.data.chat.rows import IGNORE_INDEX
from distill.data.seqkd import SeqKDDataModule
from distill.errors import DistillError
from distill.on_policy import answer_rows
from distill.sampling import eval_mode, forked_rng

log = logging.getLogger(__name__)


def answer_chunk(model, rows, prompt_lens, *, new_tokens, temperature, seed, batch_size, pad, stops, device):
    """Teacher answers for ``rows`` (``[n, L + 1]``): rows and their CE targets (the answers only)."""
    spec = SimpleNamespace(max_new_tokens=new_tokens, temperature=temperature)
    device = torch.device(device)
    out_rows, out_targets = [], []
    with eval_mode(model), torch.no_grad(), forked_rng(device):
        for b, start in enumerate(range(0, len(rows), batch_size)):
            torch.manual_seed(seed + b)
            inputs = torch.from_numpy(rows[start : start + batch_size, :-1].astype(np.int64)).to(device)
            lens = torch.from_numpy(prompt_lens[start : start + batch_size].astype(np.int64))
            answered, mask = answer_rows(model, inputs, lens, spec, pad, stops)
            targets = torch.where(mask, answered[:, 1:], IGNORE_INDEX)
            out_rows.append(answered.cpu().numpy())
            out_targets.append(targets.cpu().numpy())
    return np.concatenate(out_rows), np.concatenate(out_targets)


def chat_seqkd_datamodule(
    base, model, *, teacher_key: str, new_tokens: int | None, temperature: float, seed: int, batch_size: int,
    max_examples: int | None, cache_dir: str | Path, device, chunk_rows: int = 256,
) -> SeqKDDataModule:  # fmt: skip
    """``base`` (a ChatDataModule, one conversation per row) with its training rows replaced by the
    teacher's answers to their prompts."""
    if base.packing:
        raise DistillError(
            "seq_kd.enabled with data.packing=true: the teacher answers each prompt alone; use data.packing=false"
        )
    rows, prompt_lens = base.train_blocks[:max_examples], base.train_extras["prompt_len"][:max_examples]
    pad, stops = base.special_ids()
    new_tokens = new_tokens or base.seq_len
    parts = dict(
        teacher=teacher_key, data=base.data_key, tokenizer=base.tokenizer_key, seq_len=base.seq_len,
        new_tokens=new_tokens, temperature=temperature, seed=seed, batch_size=batch_size if temperature > 0 else None,
    )  # fmt: skip
    log.info(
        "seqkd: the teacher answers %d prompts (up to %d tokens, temperature %g)", len(rows), new_tokens, temperature
    )
    chunks = []
    for c, start in enumerate(range(0, len(rows), chunk_rows)):
        at = slice(start, start + chunk_rows)

        def build(tmp: Path, at=at, c=c) -> None:
            r, t = answer_chunk(
                model, rows[at], prompt_lens[at], new_tokens=new_tokens, temperature=temperature,
                seed=seed + 1000 * c, batch_size=batch_size, pad=pad, stops=stops, device=device,
            )  # fmt: skip
            np.save(tmp / "rows.npy", r)
            np.save(tmp / "targets.npy", t)

        path = cached_dir(cache_dir, "seqkd", fingerprint("chat-seqkd-v1", parts, start, chunk_rows), build)
        chunks.append((np.load(path / "rows.npy"), np.load(path / "targets.npy")))
    answered = np.concatenate([r for r, _ in chunks]), np.concatenate([t for _, t in chunks])
    return SeqKDDataModule(base, *answered, key=fingerprint(parts, len(rows)))
