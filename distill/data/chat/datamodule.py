"""``data=chat``: conversations rendered with a chat template, the loss on the assistant's tokens.

The TextDataModule interface (documents, tokenizer, ``train_blocks``/``val_blocks``, loaders), so
every teacher backend and objective runs on it unchanged. Batches are ``(inputs, targets, row,
extras)``: ``extras["prompt_len"]`` (tokens before the row's last target turn, for on-policy
sampling) without packing, ``extras["position_ids"]`` (restarting per conversation) with it.
Validation is always one conversation per row, so its metrics do not depend on packing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from distill.cache import cached_dir, fingerprint, text_fingerprint
from distill.data.chat.conversations import Conversation, read_conversations
from distill.data.chat.render import TRAIN_ON, encode
from distill.data.chat.rows import packed_rows, single_rows
from distill.data.chat.templates import resolve_template, special_tokens, template_text
from distill.data.datamodule import TextDataModule
from distill.data.records import read_records
from distill.data.sampler import data_shard, eval_loader, train_loader
from distill.data.sources import Document
from distill.data.split import split_documents
from distill.data.tokenizer import train_bpe
from distill.errors import DistillError

log = logging.getLogger(__name__)


class ChatDataset(Dataset):
    """Rows ``[n, L + 1]`` with targets ``[n, L]`` as ``(inputs, targets, row, extras)``."""

    def __init__(self, blocks: np.ndarray, targets: np.ndarray, extras: dict[str, np.ndarray]):
        self.blocks = torch.from_numpy(blocks.astype(np.int64))
        self.targets = torch.from_numpy(targets.astype(np.int64))
        self.extras = {k: torch.from_numpy(v.astype(np.int64)) for k, v in extras.items()}

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int):
        extras = {k: (v[i, :-1] if v.ndim == 2 else v[i]) for k, v in self.extras.items()}
        return self.blocks[i, :-1], self.targets[i], i, extras


class ChatDataModule(TextDataModule):
    def __init__(
        self,
        source: Callable[[], tuple[list[Conversation], Counter]],
        chat_template: str | None = None,
        train_on: str = "all",
        packing: bool = False,
        answers_are_python: bool = False,
        split_seed: int | None = None,
        **kwargs,
    ):
        super().__init__(source=source, **kwargs)
        self.answers_are_python = answers_are_python  # reports compile rate and def-line match (eval/answers.py)
        # the validation split's seed (default: data.seed); set it to vary the batch order across seeds while the
        # held-out conversations, and what a cached teacher was trained on, stay the same
        self.split_seed = self.seed if split_seed is None else split_seed
        if self.filters:
            raise DistillError("data/filters work on text corpora, not on conversations: use data/filters=none")
        if train_on not in TRAIN_ON:
            raise DistillError(f"data.train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        self.chat_template, self.train_on, self.packing = chat_template, train_on, packing
        self.template: str | None = None
        self.train_conversations: list[Conversation] = []
        self.val_conversations: list[Conversation] = []
        self.train_targets = self.val_targets = None
        self.train_extras: dict = {}
        self.val_prompt_lens = None
        self.read_skips: Counter = Counter()
        self.stats: dict = {}

    def load_documents(self) -> None:
        conversations, self.read_skips = self.source()
        if self.read_skips:
            log.warning("chat data: skipped %s", dict(self.read_skips))
        if not conversations:
            raise DistillError(
                f"the chat data is empty: no conversation with an assistant turn ({dict(self.read_skips)})"
            )
        # split by prompt (or group): a prompt asked twice, or one file's functions, stay in one split
        keys = sorted({c.split_key for c in conversations})
        if len(keys) < 2:
            raise DistillError(f"the chat data has {len(keys)} distinct prompt(s); at least 2 are needed to split")
        _, val = split_documents([Document(k, "") for k in keys], self.val_fraction, self.split_seed)
        val_keys = {d.id for d in val}
        self.train_conversations = [c for c in conversations if c.split_key not in val_keys]
        self.val_conversations = [c for c in conversations if c.split_key in val_keys]
        self.source_key = fingerprint(
            "chat-v1",
            *(text_fingerprint([_dump(c) for c in s]) for s in (self.train_conversations, self.val_conversations)),
        )
        self.data_key = self.source_key

    def train_tokenizer(self) -> Path:
        """Byte-level BPE on the training conversations as the template renders them, holding the
        template's special tokens whole (a teacher trained from scratch has no template of its own)."""
        if not self.chat_template:
            raise DistillError(
                "no chat template: a tokenizer trained here has none; set data.chat_template (a preset such as "
                "chatml, a Jinja file, or a Jinja string)"
            )
        template, specials = template_text(self.chat_template), special_tokens(self.chat_template)
        key = fingerprint("bpe-chat-v1", self.source_key, template, specials, self.vocab_size)

        def build(tmp: Path) -> None:
            # transformers' renderer (its Jinja environment and {% generation %} tag), without a tokenizer
            from transformers.utils.chat_template_utils import render_jinja_template

            chats = [list(c.messages) for c in self.train_conversations]
            texts, _ = render_jinja_template(chats, chat_template=template)
            train_bpe(texts, self.vocab_size, tmp, special_tokens=specials)

        return cached_dir(self.cache_dir, "tokenizers", key, build)

    def use_tokenizer(self, tokenizer_path: str | Path) -> None:
        """The tokenizer with the template set on it: the exported student carries it."""
        super().use_tokenizer(tokenizer_path)
        self.template = resolve_template(self.tokenizer, self.chat_template, str(tokenizer_path))
        self.tokenizer.chat_template = self.template
        self.tokenizer_key = fingerprint(self.tokenizer_key, "chat-template", self.template)
        # what the rows and their targets depend on besides the conversations: a cache records it
        self.chat_key = fingerprint(self.template, self.train_on, self.packing)
        self.data_key = fingerprint(self.source_key, self.chat_key)
        # the rendered validation conversations: what text-based tools (distill-eval's lm_eval tasks) read
        render = lambda c: self.tokenizer.apply_chat_template(list(c.messages), tokenize=False)  # noqa: E731
        self.val_docs = [Document(c.id, render(c)) for c in self.val_conversations]

    def special_ids(self) -> tuple[int, list[int]]:
        """The pad id and the ids that end an assistant turn (EOS and the template's end-of-turn)."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        probe = Conversation("probe", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}))
        end_of_turn = encode(tok, probe, self.template)
        last = end_of_turn.ids[int(np.flatnonzero(end_of_turn.mask)[-1])]
        stops = [tok.eos_token_id] + ([last] if last in tok.all_special_ids or last in tok.added_tokens_decoder else [])
        return pad, sorted(set(stops))

    def setup(self, stage: str | None = None) -> None:
        if self.train_blocks is not None:
            return
        key = fingerprint("chat-rows-v1", self.data_key, self.tokenizer_key, self.special_ids(), self.seq_len)
        path = cached_dir(self.cache_dir, "chat", key, self._build)
        self.stats = json.loads((path / "stats.json").read_text())
        self.stats["read_skipped"] = dict(self.read_skips)
        load = lambda name: np.load(path / f"{name}.npy")  # noqa: E731
        self.train_blocks, self.train_targets = load("train"), load("train_targets")
        extra = "train_positions" if self.packing else "train_prompt_lens"
        self.train_extras = {"position_ids" if self.packing else "prompt_len": load(extra)}
        n_val = self.max_val_blocks
        self.val_blocks, self.val_targets = load("val")[:n_val], load("val_targets")[:n_val]
        self.val_prompt_lens = load("val_prompt_lens")[:n_val]
        self._log_stats()
        if len(self.train_blocks) < self.batch_size or len(self.val_blocks) < 1:
            raise DistillError(
                f"too few usable conversations: {len(self.train_blocks)} train rows / {len(self.val_blocks)} "
                f"validation for batch size {self.batch_size} (stats: {self.stats})"
            )

    def _build(self, tmp: Path) -> None:
        pad, _ = self.special_ids()
        stats = {}
        for name, convs in (("train", self.train_conversations), ("val", self.val_conversations)):
            encoded = [encode(self.tokenizer, c, self.template, self.train_on) for c in convs]
            if name == "train" and self.packing:
                rows, targets, positions, stats[name] = packed_rows(encoded, self.seq_len, pad)
                np.save(tmp / "train_positions.npy", positions)
            else:
                rows, targets, prompt_lens, stats[name] = single_rows(encoded, self.seq_len, pad)
                np.save(tmp / f"{name}_prompt_lens.npy", prompt_lens)
            dtype = np.int32 if len(self.tokenizer) < 2**31 else np.int64
            np.save(tmp / f"{name}.npy", rows.astype(dtype))
            np.save(tmp / f"{name}_targets.npy", targets.astype(dtype))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))

    def _log_stats(self) -> None:
        for name in ("train", "val"):
            s = self.stats[name]
            log.info(
                "%s: %d of %d conversations in %d rows, %d target tokens (%d truncated to data.seq_len=%d)",
                name, s["kept"], s["conversations"], s["rows"], s["target_tokens"], s["truncated"], self.seq_len,
            )  # fmt: skip
            if s["overlong_no_target"]:
                log.warning(
                    "%s: skipped %d conversation(s) whose prompt fills data.seq_len=%d",
                    name, s["overlong_no_target"], self.seq_len,
                )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        dataset = ChatDataset(self.train_blocks, self.train_targets, self.train_extras)
        return train_loader(dataset, self.batch_size, self.seed, self.num_workers, **data_shard(self.trainer))

    def val_dataloader(self) -> DataLoader:
        dataset = ChatDataset(self.val_blocks, self.val_targets, {"prompt_len": self.val_prompt_lens})
        return eval_loader(dataset, self.batch_size, self.seed, self.num_workers)


def _dump(c: Conversation) -> str:
    return json.dumps([c.first_target, list(c.messages)], sort_keys=True, ensure_ascii=False)


def from_chat_files(paths: list[str], max_docs: int | None = None, **kwargs) -> ChatDataModule:
    """Hydra factory (``configs/data/chat.yaml``); ``max_docs``: the first N conversations."""
    paths = list(paths) if paths is not None else []
    return ChatDataModule(source=lambda: read_conversations(read_records(paths), max_docs), **kwargs)


def from_stdlib_instruct(
    max_docs: int | None = None, max_chars: int = 600, chat_template: str = "chatml", **kwargs
) -> ChatDataModule:
    """Hydra factory (``configs/data/stdlib_instruct.yaml``): functions of the first ``max_docs`` files."""
    from distill.data.chat.stdlib_instruct import stdlib_conversations

    source = lambda: stdlib_conversations(max_docs, max_chars)  # noqa: E731
    return ChatDataModule(source=source, chat_template=chat_template, answers_are_python=True, **kwargs)
