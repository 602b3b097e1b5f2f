"""Sequence-level knowledge distillation (Kim & Rush 2016): train on what the teacher writes.

The teacher continues the first ``prompt_tokens`` tokens of each training block (greedy by
default, the paper's beam-1 approximation of its mode; sampled at ``temperature > 0``). The
student is then trained with cross-entropy on those continuations, so it imitates the
teacher's sequences rather than the corpus. Generation is the expensive part, so it is done
once and cached under a key of everything that made it.

``generate_continuations`` returns rows of ``prompt_tokens + new_tokens`` tokens; the
datamodule right-pads them to the base's ``seq_len + 1`` (``new_tokens`` defaults to filling
it), so every split keeps one shape and ``dm.seq_len`` means the same everywhere (offline
teacher caches, reports). Targets are -100 on the prompt, after the first EOS the teacher
writes (that EOS itself is a target: the student learns to stop) and on padding. Validation
stays on the base datamodule's real text: the student is judged on data, not on teacher samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from distill.cache import cached_dir, fingerprint
from distill.data.prompt_response import IGNORE_INDEX, MaskedBlockDataset
from distill.data.sampler import data_shard, train_loader
from distill.errors import DistillError
from distill.sampling import eval_mode, forked_rng

log = logging.getLogger(__name__)


def generate_continuations(
    model,
    blocks: np.ndarray,
    *,
    prompt_tokens: int,
    new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    vocab_size: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher continuations of each block's first ``prompt_tokens`` tokens, with ``model.generate`` (KV cache).

    Returns ``(rows [n, P + N], targets [n, P + N - 1])``; ``targets[:, j]`` is ``rows[:, j + 1]``
    on generated tokens up to and including the first EOS, else -100. Rows past the EOS are
    padded with ``pad_token_id``. ``vocab_size`` stops a teacher with padded embedding rows
    from writing ids the tokenizer does not have. ``device`` defaults to the model's; the
    model is not moved. Sampling is seeded per batch, so it also depends on ``batch_size``."""
    n, width = blocks.shape
    if not 1 <= prompt_tokens <= width or new_tokens < 1 or temperature < 0:
        raise DistillError(
            f"seqkd: need 1 <= prompt_tokens <= {width}, new_tokens >= 1 and temperature >= 0 "
            f"(got {prompt_tokens}, {new_tokens}, {temperature})"
        )
    eos = eos_token_id if eos_token_id is not None else model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    pad = pad_token_id if pad_token_id is not None else min(eos_ids, default=0)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    kwargs = _generate_kwargs(model, new_tokens, temperature, eos, pad, vocab_size)

    rows = np.full((n, prompt_tokens + new_tokens), pad, dtype=np.int64)
    rows[:, :prompt_tokens] = blocks[:, :prompt_tokens]
    prompts = torch.from_numpy(rows[:, :prompt_tokens].copy())
    with eval_mode(model), torch.no_grad(), forked_rng(device):
        for b, start in enumerate(range(0, n, batch_size)):
            torch.manual_seed(seed + b)
            ids = prompts[start : start + batch_size].to(device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)[:, prompt_tokens:]
            rows[start : start + len(ids), prompt_tokens : prompt_tokens + out.shape[1]] = out.cpu().numpy()
    return rows, continuation_targets(rows, prompt_tokens, eos_ids)


def continuation_targets(rows: np.ndarray, prompt_tokens: int, eos_ids: set[int]) -> np.ndarray:
    """Next-token targets of ``rows``: the generated part up to and including its first EOS."""
    targets = np.full((rows.shape[0], rows.shape[1] - 1), IGNORE_INDEX, dtype=np.int64)
    new = rows[:, prompt_tokens:]
    for i, seq in enumerate(new):
        hits = np.flatnonzero(np.isin(seq, list(eos_ids))) if eos_ids else []
        stop = int(hits[0]) + 1 if len(hits) else len(seq)
        targets[i, prompt_tokens - 1 : prompt_tokens - 1 + stop] = seq[:stop]
    return targets


def _generate_kwargs(model, new_tokens, temperature, eos, pad, vocab_size) -> dict:
    """Explicit settings, so a checkpoint's generation_config.json (top_p, repetition penalty...)
    cannot silently change what "greedy" or "temperature T" means."""
    kwargs = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=0,
        num_beams=1,
        use_cache=True,
        repetition_penalty=1.0,
        eos_token_id=eos,
        pad_token_id=pad,
        do_sample=temperature > 0,
    )
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    rows = model.get_output_embeddings().weight.shape[0]
    if vocab_size is not None and rows > vocab_size:
        kwargs["suppress_tokens"] = list(range(vocab_size, rows))
    return kwargs


def cached_continuations(
    cache_dir: str | Path, key_parts, build_fn: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """``build_fn()`` once per key; later runs read ``cache_dir/seqkd/<key>/{rows,targets}.npy``."""

    def build(tmp: Path) -> None:
        rows, targets = build_fn()
        np.save(tmp / "rows.npy", rows)
        np.save(tmp / "targets.npy", targets)

    path = cached_dir(cache_dir, "seqkd", fingerprint("seqkd-v1", key_parts), build)
    return np.load(path / "rows.npy"), np.load(path / "targets.npy")


class SeqKDDataModule(L.LightningDataModule):
    """Trains on teacher continuations, validates on the base datamodule's real data.

    Wraps a base datamodule that is already set up (tokenizer, blocks); Lightning's
    ``setup`` is then a no-op. Keeps the ``(inputs, targets, row_index)`` batch contract."""

    def __init__(self, base, rows: np.ndarray, targets: np.ndarray, key: str):
        super().__init__()
        self.base = base
        self.train_blocks, self.train_targets = rows, targets
        self.val_blocks = base.val_blocks
        self.tokenizer, self.tokenizer_key = base.tokenizer, base.tokenizer_key
        # A new data key: anything cached per (data, row), e.g. offline teacher outputs, must not reuse the base's.
        self.data_key = fingerprint(base.data_key, "seqkd", key)
        self.seq_len = base.seq_len
        if rows.shape[1] != self.seq_len + 1 or targets.shape != (len(rows), self.seq_len):
            raise ValueError(f"seqkd rows {rows.shape} / targets {targets.shape} do not fit seq_len {self.seq_len}")
        self.batch_size, self.seed, self.num_workers = base.batch_size, base.seed, base.num_workers
        if len(rows) < self.batch_size:
            raise DistillError(f"seqkd: {len(rows)} continuations are fewer than data.batch_size={self.batch_size}")

    def setup(self, stage: str | None = None) -> None:
        pass

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def train_dataloader(self) -> DataLoader:
        return train_loader(
            MaskedBlockDataset(self.train_blocks, self.train_targets),
            self.batch_size,
            self.seed,
            self.num_workers,
            **data_shard(self.trainer),
        )

    def val_dataloader(self) -> DataLoader:
        return self.base.val_dataloader()


def seqkd_datamodule(
    base,
    model,
    *,
    teacher_key: str,
    prompt_tokens: int,
    new_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    max_examples: int | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> SeqKDDataModule:
    """The wiring in one call: continuations of ``base.train_blocks`` by ``model``, cached, served.

    ``new_tokens`` defaults to ``base.seq_len + 1 - prompt_tokens`` (fill the block). ``teacher_key``
    must change whenever the teacher's weights do (the pipeline's teacher cache key, or a hash
    of ``teacher.path``)."""
    width = base.seq_len + 1
    new_tokens = width - prompt_tokens if new_tokens is None else new_tokens
    if prompt_tokens + new_tokens > width:
        raise DistillError(
            f"seqkd: prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds data.seq_len + 1 = {width}"
        )
    blocks = base.train_blocks[:max_examples]
    tok = base.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    parts = dict(
        teacher=teacher_key,
        data=base.data_key,
        tokenizer=base.tokenizer_key,
        seq_len=base.seq_len,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        temperature=temperature,
        seed=seed,
        n=len(blocks),
        batch_size=batch_size if temperature > 0 else None,
    )

    def build():
        log.info("seqkd: generating %d x %d teacher tokens (temperature %g)", len(blocks), new_tokens, temperature)
        rows, targets = generate_continuations(
            model,
            blocks,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            temperature=temperature,
            seed=seed,
            batch_size=batch_size,
            eos_token_id=tok.eos_token_id,
            pad_token_id=pad,
            vocab_size=len(tok),
            device=device,
        )
        return pad_rows(rows, targets, width, pad)

    rows, targets = cached_continuations(cache_dir or base.cache_dir, parts, build)
    return SeqKDDataModule(base, rows, targets, key=fingerprint(parts))


def pad_rows(rows: np.ndarray, targets: np.ndarray, width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad rows to ``width`` tokens; the padding is never a target."""
    extra = width - rows.shape[1]
    return (
        np.pad(rows, ((0, 0), (0, extra)), constant_values=pad),
        np.pad(targets, ((0, 0), (0, extra)), constant_values=IGNORE_INDEX),
    )
