"""The DataModule: documents -> seeded split -> tokenizer -> cached packed blocks -> loaders."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from distill.cache import TextHasher, cached_dir, fingerprint, text_fingerprint
from distill.data.filters.runner import ExecutorSpec, filter_documents
from distill.data.packing import pack, pack_to_npy, tokenize
from distill.data.sampler import data_shard, eval_loader, train_loader
from distill.data.sources import Document, Skips, require_documents
from distill.data.split import in_validation, split_documents
from distill.data.tokenizer import load_tokenizer, train_bpe
from distill.errors import DistillError

log = logging.getLogger(__name__)


class BlockDataset(Dataset):
    """Rows of a packed ``[n, seq_len + 1]`` array as (inputs, targets, row index).

    The row index lets an offline teacher cache look up the same block's teacher outputs."""

    def __init__(self, blocks: np.ndarray):
        # memory-mapped blocks (data.streaming) stay on disk: rows are read and converted one at a time
        self.lazy = isinstance(blocks, np.memmap)
        self.blocks = blocks if self.lazy else torch.from_numpy(blocks.astype(np.int64))

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row = torch.from_numpy(self.blocks[i].astype(np.int64)) if self.lazy else self.blocks[i]
        return row[:-1], row[1:], i


class DocStream:
    """Documents that are read again on every iteration instead of being held (data.streaming)."""

    def __init__(self, make: Callable[[], Iterator[Document]]):
        self.make = make

    def __iter__(self) -> Iterator[Document]:
        return iter(self.make())


class TextDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: Callable[[], list[Document]],
        seq_len: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        seed: int = 0,
        vocab_size: int = 4096,
        max_val_blocks: int | None = 64,
        cache_dir: str = ".cache",
        num_workers: int = 0,
        filters: dict | None = None,
        executor: str = "local",
        filter_tasks: int = 4,
        filter_workers: int = -1,
        keep_excluded: bool = False,
        slurm: dict | None = None,
        skips: Skips | None = None,
        streaming: bool = False,
        stream: Callable[[Skips], Iterator[Document]] | None = None,
    ):
        super().__init__()
        if seq_len < 2 or batch_size < 1:
            raise DistillError(f"data.seq_len must be >= 2 and data.batch_size >= 1 (got {seq_len}, {batch_size})")
        self.source, self.seq_len, self.batch_size = source, seq_len, batch_size
        self.val_fraction, self.seed, self.vocab_size = val_fraction, seed, vocab_size
        self.max_val_blocks, self.cache_dir, self.num_workers = max_val_blocks, cache_dir, num_workers
        # quality filters (data/filters=...), applied to the training split only: every run is
        # evaluated on the same held-out documents whatever it filtered
        self.filters = {k: v for k, v in (filters or {}).items() if v is not None}
        self.filter_executor = ExecutorSpec(executor, filter_tasks, filter_workers, dict(slurm or {}))
        self.keep_excluded = keep_excluded
        self.skips = skips if skips is not None else Skips()
        self.filter_stats: dict | None = None
        # data.streaming: the training documents are never held (split by a hash of the id, read again
        # from the source when needed, packed to a memory-mapped file); ``stream(skips)`` reads the source
        self.streaming, self.stream = streaming, stream
        if streaming and stream is None:
            raise DistillError("data.streaming=true needs a streaming source (data=files or data=stdlib)")
        self.tokenizer_path: str | None = None
        self.train_docs: list[Document] = []
        self.val_docs: list[Document] = []
        self.tokenizer = None
        self.train_blocks = self.val_blocks = None

    # -- steps the pipeline calls in order, each cheap to repeat ------------------
    def load_documents(self) -> None:
        if self.streaming:
            return self._load_streaming()
        docs = require_documents(self.source(), self.skips, "the data source")
        self._warn_skips()
        self.train_docs, self.val_docs = split_documents(docs, self.val_fraction, self.seed)
        self.data_key = fingerprint(
            text_fingerprint([d.text for d in self.train_docs]), text_fingerprint([d.text for d in self.val_docs])
        )
        self.source_key = self.data_key  # before any filter: what a from-scratch teacher is trained on

    def _load_streaming(self) -> None:
        """One pass over the source: validation documents kept (a small fraction), training documents
        only hashed and counted; ``train_docs`` reads them again from the source when iterated."""
        hashes = {True: TextHasher(), False: TextHasher()}
        val, n_train = [], 0
        for doc in self.stream(self.skips):
            is_val = in_validation(doc.id, self.val_fraction, self.seed)
            hashes[is_val].add(doc.text)
            if is_val:
                val.append(doc)
            else:
                n_train += 1
        self._warn_skips()
        if n_train == 0 or not val:
            raise DistillError(
                f"the corpus is too small to split: {n_train} training and {len(val)} validation "
                f"document(s) (data.val_fraction={self.val_fraction})"
            )
        fraction, seed, stream = self.val_fraction, self.seed, self.stream
        # a fresh Skips on every re-read: bad input is counted once, in the first pass
        self.train_docs = DocStream(lambda: (d for d in stream(Skips()) if not in_validation(d.id, fraction, seed)))
        self.val_docs = val
        self.data_key = fingerprint("stream-v1", hashes[False].hexdigest(), hashes[True].hexdigest())
        self.source_key = self.data_key
        log.info("data (streaming): %d training and %d validation documents", n_train, len(val))

    def _warn_skips(self) -> None:
        if self.skips:
            log.warning("data: skipped %d bad input(s): %s", sum(self.skips.values()), self.skips.summary())

    def train_tokenizer(self) -> Path:
        """Byte-level BPE on the training split, cached by the split's content and vocab size."""
        key = fingerprint("bpe-v1", self.data_key, self.vocab_size)
        texts = (d.text for d in self.train_docs)  # a stream: train_from_iterator never needs the list
        return cached_dir(self.cache_dir, "tokenizers", key, lambda tmp: train_bpe(texts, self.vocab_size, tmp))

    def use_tokenizer(self, tokenizer_path: str | Path) -> None:
        self.tokenizer_path = str(tokenizer_path)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.tokenizer_key = fingerprint(sorted(self.tokenizer.get_vocab().items()))

    def apply_filters(
        self, teacher_path: str | None = None, device: str = "cpu", require_kept: bool = True
    ) -> dict | None:
        """Run the quality filters over the training documents (cached by data and filter settings);
        the packed blocks are rebuilt from what they keep. Returns the filter stats. An empty result
        is an error unless ``require_kept`` is False (distill-filter reports it first)."""
        if not self.filters:
            return None
        result = filter_documents(
            self.train_docs,
            self.filters,
            input_key=self.data_key,
            cache_dir=self.cache_dir,
            executor=self.filter_executor,
            keep_excluded=self.keep_excluded,
            tokenizer_path=self.tokenizer_path,
            teacher_path=teacher_path,
            device=device,
            seed=self.seed,
            source_skipped=dict(self.skips),
        )
        kept = DocStream(result.documents) if self.streaming else list(result.documents())
        if not result.stats["kept"] and require_kept:
            raise DistillError(
                f"the filters dropped every training document ({result.stats['input']} in): "
                f"loosen data/filters (stats: {result.stats['stages']})"
            )
        log.info("filters kept %d of %d training documents", result.stats["kept"], result.stats["input"])
        self.train_docs, self.filter_stats = kept, result.stats
        self.data_key = fingerprint(self.data_key, "filtered", result.key)
        self.train_blocks = self.val_blocks = None  # repack from the kept documents
        return result.stats

    def setup(self, stage: str | None = None) -> None:
        if self.train_blocks is not None:
            return
        key = fingerprint("pack-v1", self.data_key, self.tokenizer_key, self.seq_len)
        path = cached_dir(self.cache_dir, "packed", key, self._pack_into)
        self.train_blocks = np.load(path / "train.npy", mmap_mode="r" if self.streaming else None)
        self.val_blocks = np.load(path / "val.npy")[: self.max_val_blocks]
        if len(self.train_blocks) < self.batch_size or len(self.val_blocks) < 1:
            raise DistillError(
                f"the corpus is too small: {len(self.train_blocks)} train / {len(self.val_blocks)} validation "
                f"blocks of {self.seq_len + 1} tokens for batch size {self.batch_size} (lower data.seq_len or add data)"
            )

    def _pack_into(self, tmp: Path) -> None:
        if self.streaming:  # the training blocks go straight to disk; validation is small
            pack_to_npy((d.text for d in self.train_docs), self.tokenizer, self.seq_len, tmp / "train.npy")
            np.save(tmp / "val.npy", pack(tokenize([d.text for d in self.val_docs], self.tokenizer), self.seq_len))
            return
        for name, docs in (("train", self.train_docs), ("val", self.val_docs)):
            tokens = tokenize([d.text for d in docs], self.tokenizer)
            np.save(tmp / f"{name}.npy", pack(tokens, self.seq_len))

    # -- loaders ----------------------------------------------------------------
    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def train_dataloader(self) -> DataLoader:
        return train_loader(
            BlockDataset(self.train_blocks), self.batch_size, self.seed, self.num_workers, **data_shard(self.trainer)
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(BlockDataset(self.val_blocks), self.batch_size, self.seed, self.num_workers)


def from_stdlib(max_docs: int | None = None, **kwargs) -> TextDataModule:
    """The embedded default corpus: this Python's standard library sources."""
    from distill.data.sources import stdlib_documents

    skips = Skips()
    return TextDataModule(
        source=lambda: stdlib_documents(max_docs, skips),
        skips=skips,
        stream=lambda s: iter(stdlib_documents(max_docs, s)),
        **kwargs,
    )


def from_files(paths: list[str], text_field: str = "text", max_docs: int | None = None, **kwargs) -> TextDataModule:
    """Local text / JSONL / Parquet files or a ``save_to_disk`` dataset."""
    from distill.data.sources import file_documents, iter_file_documents

    paths = list(paths) if paths is not None else []
    skips = Skips()
    return TextDataModule(
        source=lambda: file_documents(paths, text_field, max_docs, skips),
        skips=skips,
        stream=lambda s: islice(iter_file_documents(paths, text_field, s), max_docs),
        **kwargs,
    )
